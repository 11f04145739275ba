"""Copies of a patched model (``copy.deepcopy``, pickle, ``torch.save``) unpatch to a plain model."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from architectures import batch, build
from dropout_oracle import count_applications

import hf_sparseout
from hf_sparseout import SparseoutConfig

# module sites (gpt2), functional floats (opt), a config-read probability and SDPA attention (falcon)
ARCHS = [("gpt2", "causal-lm", "eager"), ("opt", "causal-lm", "eager"), ("falcon", "causal-lm", "sdpa")]


def _deepcopy(model):
    return copy.deepcopy(model)


def _pickle(model):
    return pickle.loads(pickle.dumps(model))


def _torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {"deepcopy": _deepcopy, "pickle": _pickle, "torch.save": _torch_save}


def _inputs(model) -> dict:
    return {**batch(model), "use_cache": False}


def _structure(model) -> dict:
    """Module types, instance attribute names and float attributes: what a leftover would change."""
    return {
        name: (
            type(m),
            sorted(vars(m)),
            {k: (type(v), v) for k, v in vars(m).items() if isinstance(v, float)},
            sorted(m._modules),
            "forward" in vars(m),
        )
        for name, m in model.named_modules()
    }


def _train_logits(model, inputs, seed=7) -> torch.Tensor:
    model.train()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        model.eval()


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize(("arch", "head", "impl"), ARCHS, ids=[a[0] for a in ARCHS])
def test_a_copy_of_a_patched_model_unpatches_to_the_plain_model(arch, head, impl, how, tmp_path):
    plain = build(arch, head, impl)
    model = build(arch, head, impl)
    inputs = _inputs(model)
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    copied = COPIES[how](model)
    assert hf_sparseout.is_patched(copied)

    # the copy is patched on its own: its sites are its own Sparseout modules
    plain_calls, sparse_calls = count_applications(copied, inputs)
    assert (plain_calls, sparse_calls) == (0, sum(s.calls for s in report.sparseout_sites))

    hf_sparseout.unpatch(copied)
    assert not hf_sparseout.is_patched(copied)
    assert _structure(copied) == _structure(plain)
    assert list(copied.state_dict()) == list(plain.state_dict())
    assert copied.config.to_dict() == plain.config.to_dict()
    assert not any(isinstance(m, hf_sparseout.Sparseout) for m in copied.modules())
    assert torch.equal(_train_logits(copied, inputs), _train_logits(plain, inputs))
    copied.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "config.json").is_file()

    # the original is still patched and unpatches too
    assert count_applications(model, inputs) == (0, sparse_calls)
    hf_sparseout.unpatch(model)
    assert _structure(model) == _structure(plain)
