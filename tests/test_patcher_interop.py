"""The patcher with torch.compile, gradient checkpointing, accelerate, PEFT and threads."""

from __future__ import annotations

import threading

import pytest
import torch
import torch._dynamo
from architectures import batch, build
from dropout_oracle import PlainDropoutCounter, count_applications

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.training.modeling import enable_checkpointing


def _inputs(model, use_cache: bool = True) -> dict:
    inputs = batch(model)
    if use_cache and model.config.model_type != "bert":
        inputs["use_cache"] = False
    return inputs


def _loss(model, inputs) -> torch.Tensor:
    return model(**inputs).logits.float().pow(2).mean()


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "head"), [("gpt2", "causal-lm"), ("bert", "seq-cls")])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_compiled_training_step_has_no_graph_breaks_and_no_recompiles(arch, head, impl):
    model = build(arch, head, impl)
    inputs = _inputs(model)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    model.train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_loss)(model, inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):
            torch.manual_seed(step)
            loss = compiled(**inputs).logits.float().pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    # The compiled graph still applies Sparseout: same seed, same loss as eager.
    torch.manual_seed(7)
    eager_loss = _loss(model, inputs)
    torch.manual_seed(7)
    torch.testing.assert_close(compiled(**inputs).logits.float().pow(2).mean(), eager_loss)


@pytest.mark.parametrize(("arch", "head"), [("gpt2", "causal-lm"), ("bart", "causal-lm"), ("llama", "causal-lm")])
def test_gradient_checkpointing_gives_the_same_gradients(arch, head):
    model = build(arch, head, "eager")
    inputs = _inputs(model)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    model.train()

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(3)
        _loss(model, inputs).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    enable_checkpointing(model)  # transformers' API of the installed version
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)
    torch.manual_seed(3)
    unpatched = build(arch, head, "eager")
    unpatched.train()
    unpatched.zero_grad()
    torch.manual_seed(3)
    _loss(unpatched, inputs).backward()
    some = next(iter(plain))
    assert not torch.equal(dict(unpatched.named_parameters())[some].grad, plain[some])


def test_accelerator_prepare_keeps_the_patch():
    from accelerate import Accelerator

    model = build("gpt2", "causal-lm", "sdpa")
    inputs = _inputs(model)
    oracle, _ = count_applications(model, inputs)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    prepared.train()
    loss = prepared(**inputs, labels=inputs["input_ids"]).loss
    accelerator.backward(loss)
    optimizer.step()
    unwrapped = accelerator.unwrap_model(prepared)
    assert hf_sparseout.is_patched(unwrapped)
    assert count_applications(prepared, inputs) == (0, oracle)


def test_peft_lora_dropout_sites_are_patched_and_adapters_round_trip(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is an optional extra: pip install 'hf-sparseout[peft]'")
    base = build("gpt2", "causal-lm", "eager")
    lora = peft.get_peft_model(base, peft.LoraConfig(target_modules=["c_attn"], lora_dropout=0.2, r=4))
    inputs = _inputs(lora)
    report = hf_sparseout.patch(lora, SparseoutConfig(q=1.5, targets=["lora_dropout.default"]), example_inputs=inputs)
    lora_sites = [s for s in report.sparseout_sites if "lora_dropout" in s.name]
    assert len(lora_sites) == 2 and all(s.p == 0.2 and s.calls == 1 for s in lora_sites)
    assert all(isinstance(lora.get_submodule(s.name), hf_sparseout.Sparseout) for s in lora_sites)
    # train the adapter a little so it is not all zeros, then save and reload
    lora.train()
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        lora(**inputs, labels=inputs["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora.save_pretrained(tmp_path)
    lora.eval()
    expected = lora(**inputs).logits
    reloaded = peft.PeftModel.from_pretrained(build("gpt2", "causal-lm", "eager"), tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, expected)


def test_two_models_patched_differently_run_concurrently():
    patched = build("bart", "causal-lm", "eager")
    plain_model = build("bart", "causal-lm", "eager")
    inputs = _inputs(patched)
    oracle, _ = count_applications(plain_model, inputs)
    hf_sparseout.patch(patched, SparseoutConfig(q=1.5), example_inputs=inputs)
    patched.train()
    plain_model.train()
    results: dict[str, list[tuple[int, int]]] = {"patched": [], "plain": []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(name, model):
        try:
            barrier.wait()
            for _ in range(20):
                results[name].append(count_applications(model, inputs))
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=run, args=a) for a in (("patched", patched), ("plain", plain_model))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert set(results["patched"]) == {(0, oracle)}
    assert set(results["plain"]) == {(oracle, 0)}
    with PlainDropoutCounter() as counter:
        pass
    assert counter.count == 0
