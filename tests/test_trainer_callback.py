"""``SparsityCallback`` in ``transformers.Trainer``: figures in every evaluation's metrics, training unchanged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import LAUNCH_2
from trainer_helpers import make_trainer, token_dataset
from transformers import TrainerCallback, default_data_collator

import hf_sparseout
from hf_sparseout import SparsityCallback, SparsityMonitor

EVAL_SITES = ["transformer.drop", "transformer.h.0.mlp.dropout", "transformer.h.1.mlp.dropout"]


def _evals(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "eval_loss" in e]


def _by_hand(model, dataset) -> dict:
    """The oracle: a SparsityMonitor over the eval set, one padded batch at a time, model in eval mode."""
    model.eval()
    monitor = SparsityMonitor(model)
    with monitor, torch.no_grad():
        for start in range(0, len(dataset), 2):
            batch = default_data_collator([dataset[i] for i in range(start, min(start + 2, len(dataset)))])
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return monitor.compute()


@pytest.mark.slow
def test_figures_reach_log_history_at_each_eval_and_match_a_monitor(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[SparsityCallback()])
    trainer.train()
    evals = _evals(trainer)
    assert [e["step"] for e in evals] == [3, 6]
    for entry in evals:
        for metric in ("hoyer", "zero_fraction", "near_zero_fraction", "mean_abs"):
            assert math.isfinite(entry[f"eval_sparsity_{metric}"])
        for site in [s for s in hf_sparseout.get_report(trainer.model).sparseout_sites if s.kind != "attention"]:
            assert f"eval_sparsity_hoyer/{site.name}" in entry
        assert not any(k.startswith("eval_sparsity_hoyer/") and "attn_dropout" in k for k in entry)
    assert evals[0]["eval_sparsity_hoyer"] != evals[1]["eval_sparsity_hoyer"]  # measured anew at each eval

    metrics = trainer.evaluate()  # the returned metrics carry the figures too, over the whole eval set once
    oracle = _by_hand(trainer.model, trainer.eval_dataset)
    assert metrics["eval_sparsity_hoyer"] == pytest.approx(oracle["overall"]["hoyer"], rel=1e-9)
    assert metrics["eval_sparsity_mean_abs"] == pytest.approx(oracle["overall"]["mean_abs"], rel=1e-9)
    for site in EVAL_SITES:
        want = oracle["sites"][site]["zero_fraction"]
        assert metrics[f"eval_sparsity_zero_fraction/{site}"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert trainer.state.log_history[-1]["eval_sparsity_hoyer"] == metrics["eval_sparsity_hoyer"]


@pytest.mark.slow
def test_training_is_unchanged_by_the_callback(tmp_path):
    runs = []
    for callbacks in (None, [SparsityCallback()]):
        trainer = make_trainer(tmp_path / str(len(runs)), callbacks=callbacks)
        trainer.train()
        runs.append(trainer.state.log_history)
    losses = [[(e["step"], e["loss"]) for e in history if "loss" in e] for history in runs]
    assert len(losses[0]) == 6 and losses[0] == losses[1]  # bit-identical loss curve, same seed
    eval_losses = [[e["eval_loss"] for e in history if "eval_loss" in e] for history in runs]
    assert eval_losses[0] == eval_losses[1]
    assert not any("eval_sparsity_hoyer" in e for e in runs[0]) and any("eval_sparsity_hoyer" in e for e in runs[1])


class _Recorder(TrainerCallback):
    """Stands for a report_to tracker: records what on_log receives."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


@pytest.mark.slow
def test_attach_runs_before_trackers_and_options_select_figures(tmp_path):
    recorder = _Recorder()
    trainer = make_trainer(tmp_path, callbacks=[recorder], max_steps=3)
    callback = SparsityCallback.attach(trainer, metrics=["hoyer"], per_site=False)
    assert trainer.callback_handler.callbacks[0] is callback
    trainer.train()
    seen = [log for log in recorder.logs if "eval_loss" in log]
    assert len(seen) == 1
    assert [k for k in seen[0] if "sparsity" in k] == ["eval_sparsity_hoyer"]


def test_sites_option_and_several_eval_sets(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=0)
    SparsityCallback.attach(trainer, sites=["h.1.mlp.dropout"], metrics=["zero_fraction", "hoyer"])
    metrics = trainer.evaluate({"a": token_dataset(4, seed=3), "b": token_dataset(6, seed=4)})
    for prefix in ("eval_a", "eval_b"):
        assert sorted(k for k in metrics if k.startswith(f"{prefix}_sparsity")) == sorted(
            [f"{prefix}_sparsity_zero_fraction", f"{prefix}_sparsity_hoyer"]
            + [f"{prefix}_sparsity_{m}/transformer.h.1.mlp.dropout" for m in ("zero_fraction", "hoyer")]
        )
    assert metrics["eval_a_sparsity_hoyer"] != metrics["eval_b_sparsity_hoyer"]


def test_bad_options_are_errors_that_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="subset of"):
        SparsityCallback(metrics=["hoyr"])
    trainer = make_trainer(tmp_path, max_steps=0)
    with pytest.raises(ValueError, match=r"match no module.*modules:"):
        SparsityCallback.attach(trainer, sites=["no.such.site"])


def test_late_add_callback_warns_instead_of_reporting_a_partial_eval(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=0)
    trainer.add_callback(SparsityCallback())
    with pytest.warns(UserWarning, match="first batch was not measured"):
        first = trainer.evaluate()
    assert not any("sparsity" in k for k in first)
    second = trainer.evaluate()  # installed since: measured in full
    oracle = _by_hand(trainer.model, trainer.eval_dataset)
    assert second["eval_sparsity_hoyer"] == pytest.approx(oracle["overall"]["hoyer"], rel=1e-9)


SCRIPT = Path(__file__).with_name("trainer_callback_script.py")
LAUNCH = LAUNCH_2


def _script(prefix: list[str], out: Path) -> dict:
    proc = subprocess.run([*prefix, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_give_the_one_process_figures(tmp_path):
    # 7 eval rows in per-device batches of 2: accelerate repeats a sample on the last batch of 2 processes.
    one = _script([sys.executable], tmp_path / "one.json")
    two = _script(LAUNCH, tmp_path / "two.json")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["eval_rows"] == two["eval_rows"] == 7
    keys = [k for k in one["metrics"] if "sparsity" in k]
    assert len(keys) > 4 and keys == [k for k in two["metrics"] if "sparsity" in k]
    for key in keys:
        assert math.isclose(one["metrics"][key], two["metrics"][key], rel_tol=1e-6), key
    # (Trainer's own eval_loss is a mean of per-batch means: it differs when the batches differ, as here.)
