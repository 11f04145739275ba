"""insert="mlp": a Sparseout site on the post-activation MLP units of every supported family."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, batch, build
from torch import nn

import hf_sparseout
from hf_sparseout import Sparseout, SparseoutConfig
from hf_sparseout.patcher.placements import MLP_ACTIVATIONS

# MLP blocks per tiny model (2 layers): T5 (seq2seq) has 2 + 2, ALBERT shares one layer.
BLOCKS = {"t5": 4, "albert": 1}


def _activation_class(module: nn.Module) -> bool:
    cls = type(module)
    return (
        cls.__module__.startswith("transformers.activations")
        or cls.__module__.endswith("modules.activation")
        or "gelu" in cls.__name__.lower()
    )


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_mlp_units_get_sparseout_in_training_and_identity_in_eval(arch):
    head = ARCHITECTURES[arch][1][0]
    model = build(arch, head, "eager")
    inputs = batch(model)
    with torch.no_grad():
        before = model(**inputs).logits
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.5, q=1.0, insert="mlp"), example_inputs=inputs)
    inserted = [s for s in report.sites if s.kind == "inserted"]
    assert len(inserted) == BLOCKS.get(arch, 2), report
    suffix = MLP_ACTIVATIONS[arch].split(".")[-1]
    for site in inserted:
        assert site.name.endswith(suffix) and site.sparseout and site.new_p == 0.5
        assert _activation_class(model.get_submodule(site.name)), site.name
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for site in inserted:
        module = model.get_submodule(site.module)
        assert isinstance(module, Sparseout)
        module.register_forward_hook(lambda m, a, out, n=site.name: seen.__setitem__(n, (a[0], out)))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before)  # eval: identity, bit for bit
        assert len(seen) == len(inserted) and all(out is x for x, out in seen.values())
        seen.clear()
        model.train()
        model(**inputs)
    assert len(seen) == len(inserted)
    for name, (x, out) in seen.items():
        dropped = out != x
        assert dropped.any(), f"{name}: no entry noised in training"
        # q = 1, p = 0.5 (noise +-1): kept x + sign(x) |x|^(1/2), dropped x - sign(x) |x|^(1/2)
        torch.testing.assert_close((out - x).abs(), x.abs().sqrt())


def test_p0_mlp_sites_for_the_control():
    model = build("gpt2", "causal-lm", "eager")
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.0, insert="mlp", attention="keep"))
    inserted = [s.name for s in report.sites if s.kind == "inserted"]
    assert inserted == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert all(s.new_p == 0.0 for s in report.sparseout_sites)


def test_unknown_family_lists_the_supported_ones():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.act, self.drop = nn.Linear(4, 4), nn.GELU(), nn.Dropout(0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(self.act(self.lin(x)))

    with pytest.raises(ValueError, match=r"insert='mlp' does not know.*supported families: albert, bart, bert"):
        hf_sparseout.patch(Plain(), SparseoutConfig(p=0.1, insert="mlp"), example_inputs={"x": torch.randn(2, 4)})
    with pytest.raises(ValueError, match="set p > 0"):
        SparseoutConfig(insert="mlp")
