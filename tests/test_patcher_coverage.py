"""A fixed sample of transformers model types (tiny random configs from bench/tiny_models.py), each checked
against the independent dropout oracle: the full run over every type is ``python -m bench.coverage``.

The sample holds every miss named in issue 15 (LayerDrop: nllb-moe, seamless_m4t(_v2), m2m_100;
buffers written in a training forward: ibert; sub-config probabilities: blt, fuyu; ``float(p)``:
xglm) and a spread of families, MoE routers that draw random numbers included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from dropout_oracle import PlainDropoutCounter, count_applications
from transformers import PretrainedConfig

import hf_sparseout
from hf_sparseout import SparseoutConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives beside tests/, not installed
from bench.tiny_models import HEAD_MAPPINGS, build, heads_of, inputs_for

SAMPLE = [
    "nllb-moe",
    "seamless_m4t",
    "seamless_m4t_v2",
    "m2m_100",
    "ibert",
    "blt",
    "fuyu",
    "xglm",
    "gpt2",
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta-v2",
    "t5",
    "bart",
    "mbart",
    "marian",
    "opt",
    "llama",
    "falcon",
    "gpt_neox",
    "bloom",
    "phi",
    "mixtral",
    "switch_transformers",
    "big_bird",
    "biogpt",
]


def _sdpa(model_type: str) -> bool:
    import transformers

    auto = getattr(transformers, HEAD_MAPPINGS[heads_of(model_type)[0]][0])
    return bool(auto._model_mapping[type(transformers.AutoConfig.for_model(model_type))]._supports_sdpa)


RANDOM_ROUTING = {"switch_transformers"}
"""Router jitter noise draws from the RNG: which experts (and so which dropouts) run differs between two forwards."""

SDPA_SAMPLE = {"fuyu", "blt", "m2m_100", "seamless_m4t_v2", "gpt2", "bert", "bart", "llama"}
"""SDPA for a subset, to keep the test near a minute on 2 cores (bench.coverage runs SDPA for every type)."""

CASES = [(t, impl) for t in SAMPLE for impl in ("eager", "sdpa") if impl == "eager" or (t in SDPA_SAMPLE and _sdpa(t))]

BUILDER_SAMPLE = ["bamba", "zamba2", "deepseek_v3", "musicgen", "gemma4_text"]
"""Types the tiny builder could not run before issue 15's second pass, one per cause (hybrid Mamba/attention layer
lists, sizes derived in ``__post_init__``, latent attention's KV heads, a head built on a sub-config, KV-shared
layers): eager, ``slow``."""

BUILDER_CASES = [(t, "eager") for t in BUILDER_SAMPLE]

FAST = {("gpt2", "eager"), ("gpt2", "sdpa"), ("bart", "eager"), ("xglm", "eager"), ("m2m_100", "eager")}
"""The fast tier's share: a decoder on both attention paths, an encoder-decoder, two of issue 15's misses (float(p),
LayerDrop); the other cases are ``slow`` (the whole sample takes about a minute on 2 cores)."""


def _param(*values, fast: bool) -> pytest.param:
    return pytest.param(*values, id="-".join(values), marks=() if fast else pytest.mark.slow)


class _NoLayerDrop:
    """Sets every ``*layerdrop*`` float of the model's modules and configs to 0 (for comparable counts)."""

    def __init__(self, model: torch.nn.Module) -> None:
        objs = list(model.modules())
        objs += [v for m in model.modules() for v in vars(m).values() if isinstance(v, PretrainedConfig)]
        objs += [
            v
            for c in list(objs)
            if isinstance(c, PretrainedConfig)
            for v in vars(c).values()
            if isinstance(v, PretrainedConfig)
        ]
        self.saved = [
            (o, k, v) for o in objs for k, v in list(vars(o).items()) if "layerdrop" in k and isinstance(v, float)
        ]

    def __enter__(self) -> None:
        for o, k, _ in self.saved:
            setattr(o, k, 0.0)

    def __exit__(self, *exc) -> None:
        for o, k, v in self.saved:
            setattr(o, k, v)


def _counts(model, inputs) -> tuple[int, int]:
    with _NoLayerDrop(model):
        return count_applications(model, inputs)


def _plain_places(model, inputs) -> set:
    model.train()
    try:
        with _NoLayerDrop(model), torch.no_grad(), PlainDropoutCounter() as counter:
            model(**inputs)
    finally:
        model.eval()
    return counter.places


def _state(model) -> dict:
    """Everything a dry run must leave alone: values, flags, hooks, instance attributes, RNG."""
    return {
        "tensors": {k: v.clone() for k, v in [*model.named_parameters(), *model.named_buffers()]},
        "flags": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        "attrs": [sorted(vars(m)) for m in model.modules()],
        "rng": torch.get_rng_state(),
    }


def _same(a: dict, b: dict) -> bool:
    return (
        a["tensors"].keys() == b["tensors"].keys()
        and all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
        and a["flags"] == b["flags"]
        and a["hooks"] == b["hooks"]
        and a["attrs"] == b["attrs"]
        and torch.equal(a["rng"], b["rng"])
    )


@pytest.mark.parametrize(("model_type", "impl"), [_param(t, i, fast=(t, i) in FAST) for t, i in CASES + BUILDER_CASES])
def test_sampled_type_every_dropout_becomes_sparseout_and_the_report_agrees(model_type, impl):
    model = build(model_type, heads_of(model_type)[0], impl)
    inputs = inputs_for(model)
    oracle, _ = _counts(model, inputs)
    assert oracle > 0, "every dropout is 0.2 in the tiny config: some must apply"

    before = _state(model)
    report = hf_sparseout.inspect(model, example_inputs=inputs)
    assert _same(before, _state(model)), "inspect() changed the model or the RNG"

    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    plain, sparse = _counts(model, inputs)
    assert plain == 0, f"{plain} plain dropouts left\n{report}"
    assert sparse == oracle or (model_type in RANDOM_ROUTING and sparse > 0)
    assert len(report.plain_sites) == 0
    checked = hf_sparseout.verify(model, inputs)
    assert checked.ok, checked
    assert sum(c.calls for c in checked.sparseout) == oracle or model_type in RANDOM_ROUTING


@pytest.mark.parametrize("model_type", [_param(t, fast=t == "gpt2") for t in ("gpt2", "bart", "xglm", "fuyu", "blt")])
def test_the_report_never_undercounts_the_plain_dropout_left(model_type):
    model = build(model_type, heads_of(model_type)[0], "eager")
    inputs = inputs_for(model)
    sites = hf_sparseout.inspect(model, example_inputs=inputs).sparseout_sites
    exclude = [sites[0].name, sites[-1].name]  # two sites left plain (fuyu: a config value read by every layer)
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5, exclude=exclude), example_inputs=inputs)
    places = _plain_places(model, inputs)
    assert places, "the excluded sites stay plain dropout"
    assert len(report.plain_sites) >= len(places)
    checked = hf_sparseout.verify(model, inputs)
    assert checked.agrees and not checked.ok
    assert len(checked.uncovered) <= len(report.plain_sites)
