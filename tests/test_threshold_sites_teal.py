"""The `teal` threshold sites: every weight matrix inside the transformer blocks, by structure, any family."""

from __future__ import annotations

import pytest
from torch import nn

from hf_sparseout.metrics.threshold_sites import DEFAULT_ROLES, FAMILIES, family_of, select_sites
from hf_sparseout.patcher.patterns import name_matches
from tests.architectures import build

CASES = [
    ("gpt2", "causal-lm"),
    ("gpt2", "seq-cls"),
    ("bert", "seq-cls"),
    ("llama", "causal-lm"),
    ("opt", "causal-lm"),
    ("distilbert", "seq-cls"),  # no _no_split_modules: the blocks are its layer list
    ("gpt_neox", "causal-lm"),
]


def _by_roles(model: nn.Module, roles: tuple[str, ...]) -> set[str]:
    patterns = [FAMILIES[family_of(model)][role] for role in roles]
    return {n for n, _ in model.named_modules() if n and any(name_matches(p, n) for p in patterns)}


@pytest.mark.parametrize(("arch", "head"), CASES)
def test_teal_is_every_weight_matrix_of_the_blocks_and_the_default(arch, head):
    model = build(arch, head, "sdpa")
    teal = select_sites(model, "teal")
    # the family's four roles (attention in and out, MLP in and down), found by structure alone
    assert set(teal) == _by_roles(model, tuple(FAMILIES[family_of(model)]))
    assert list(select_sites(model)) == list(teal)  # the default
    assert not any("lm_head" in n or "classifier" in n or "score" in n or "pooler" in n for n in teal)
    # the former default (no attention output projection) stays selectable by name
    assert set(select_sites(model, "family")) == _by_roles(model, DEFAULT_ROLES)


def test_teal_includes_gpt2_attention_output_projection():
    model = build("gpt2", "causal-lm", "sdpa")
    assert {"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"} <= set(select_sites(model))


def test_teal_needs_no_family_table():
    model = build("modernbert", "seq-cls", "sdpa")
    assert family_of(model) is None
    teal = select_sites(model, "teal")
    layers = [n for n, m in model.named_modules() if type(m).__name__ == "ModernBertEncoderLayer"]
    expected = {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n.startswith(layer + ".") for layer in layers)
    }
    assert len(layers) == 2 and expected and set(teal) == expected
    assert all(isinstance(m, nn.Linear) for m in teal.values())


def test_family_sites_still_need_a_known_family():
    from hf_sparseout.metrics.threshold_sites import ThresholdError

    with pytest.raises(ThresholdError, match="no 'family' threshold sites"):
        select_sites(build("modernbert", "seq-cls", "sdpa"), "family")
    with pytest.raises(ThresholdError, match="no transformer blocks"):
        select_sites(nn.Sequential(nn.Linear(4, 4)), "teal")
