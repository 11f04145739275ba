"""SparsityCallback's warning when an evaluation measured nothing says what happened, not a guess."""

from __future__ import annotations

import pytest
from trainer_helpers import make_trainer

from hf_sparseout import SparsityCallback


def test_sites_never_called_in_eval_are_named_with_the_forwards_that_ran(tmp_path):
    trainer = make_trainer(tmp_path)
    callback = SparsityCallback.attach(trainer, sites=r".*attn_dropout")  # attention sites: training only
    with pytest.warns(UserWarning) as record:
        metrics = trainer.evaluate()
    message = str(record[0].message)
    assert "4 evaluation forwards" in message  # 7 rows, 2 per batch
    assert "transformer.h.0.attn.attn_dropout" in message and "not called" in message
    assert not any(key.startswith("eval_sparsity") for key in metrics) and callback.monitor is not None


def test_an_evaluation_log_without_any_measured_forward_says_so(tmp_path):
    trainer = make_trainer(tmp_path)
    SparsityCallback.attach(trainer)  # every Sparseout site: most run in eval
    with pytest.warns(UserWarning, match="no forward") as record:
        trainer.log({"eval_loss": 1.0, "eval_runtime": 0.1, "eval_samples_per_second": 1.0})
    assert "attention-probability" not in str(record[0].message)
