"""inspect/patch/verify leave other threads' RNG and other models' configs alone."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from architectures import COMMON, batch, build
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.hub.save_load import CheckpointError


def _rng_states() -> list[torch.Tensor]:
    states = [torch.get_rng_state()]
    if torch.cuda.is_available():
        states += list(torch.cuda.get_rng_state_all())
    return states


def _nllb_moe():
    # LayerDrop (torch.rand) and a router drawing torch.rand_like: both draw in a training forward
    config = AutoConfig.for_model(
        "nllb-moe", **COMMON, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_experts=4, expert_capacity=8,
        encoder_sparse_step=1, decoder_sparse_step=1, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
        encoder_layerdrop=0.3, decoder_layerdrop=0.3, decoder_start_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    return model, {**batch(model), "use_cache": False}


@pytest.mark.parametrize("arch", ["gpt2", "nllb-moe"])
def test_inspect_patch_verify_draw_nothing_from_the_global_rng(arch):
    if arch == "gpt2":
        model = build("gpt2", "causal-lm", "eager")
        inputs = {**batch(model), "use_cache": False}
    else:
        model, inputs = _nllb_moe()
    torch.manual_seed(123)
    before = _rng_states()
    hf_sparseout.inspect(model, example_inputs=inputs)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    hf_sparseout.verify(model, example_inputs=inputs)
    after = _rng_states()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # and the global RNG still works as usual: the next draw is the one a fresh seed gives
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.set_rng_state(after[0])
    assert torch.equal(torch.rand(4), expected)


def test_a_thread_drawing_while_the_probe_runs_never_gets_a_repeated_draw():
    model = build("gpt2", "causal-lm", "eager")
    inputs = {**batch(model), "use_cache": False}
    draws: list[int] = []
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            draws.append(int(torch.randint(0, 2**62, (1,))))

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        for _ in range(3):
            hf_sparseout.inspect(model, example_inputs=inputs)
            hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
            hf_sparseout.verify(model, example_inputs=inputs)
            hf_sparseout.unpatch(model)
    finally:
        stop.set()
        thread.join()
    assert len(draws) > 100, "the drawing thread should have run alongside"
    assert len(set(draws)) == len(draws), f"{len(draws) - len(set(draws))} repeated draws"


@pytest.mark.parametrize("arch", ["gpt2", "falcon"])  # falcon reads config.hidden_dropout at run time
def test_patching_one_model_leaves_a_model_built_from_the_same_config_alone(arch, tmp_path):
    reference = build(arch, "causal-lm", "eager")
    config = reference.config
    patched = AutoModelForCausalLM.from_config(config)
    other = AutoModelForCausalLM.from_config(config)
    original_config = patched.config
    plain_values = {k: v for k, v in vars(config).items() if isinstance(v, float)}
    inputs = {**batch(patched), "use_cache": False}

    hf_sparseout.patch(patched, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert "sparseout" in patched.config.to_dict()
    assert "sparseout" not in other.config.to_dict()
    assert {k: (type(v), v) for k, v in vars(other.config).items() if isinstance(v, float)} == {
        k: (float, v) for k, v in plain_values.items()
    }
    other.save_pretrained(tmp_path / "other")
    assert "sparseout" not in json.loads((tmp_path / "other" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no 'sparseout' block"):
        hf_sparseout.from_pretrained(tmp_path / "other")

    hf_sparseout.unpatch(patched)
    assert patched.config is original_config
    assert "sparseout" not in patched.config.to_dict()
    assert all(m.config is original_config for m in patched.modules() if "config" in vars(m))
