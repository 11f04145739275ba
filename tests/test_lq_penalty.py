"""LqPenalty: value and gradient against the analytic ones, padding, site selection, p = 0 sites, removal."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import hf_sparseout
from hf_sparseout import LqPenalty, SparseoutConfig
from hf_sparseout.training.modeling import enable_checkpointing


class TwoBranches(nn.Module):
    """Two independent sites: lin_a -> drop_a and lin_b -> drop_b, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.lin_a, self.lin_b = nn.Linear(5, 6), nn.Linear(5, 3)
        self.drop_a, self.drop_b = nn.Dropout(0.1), nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop_a(self.lin_a(x)).sum(-1) + self.drop_b(self.lin_b(x)).sum(-1)


def toy(p: float = 0.0) -> TwoBranches:
    torch.manual_seed(0)
    model = TwoBranches()
    hf_sparseout.patch(model, SparseoutConfig(p=p, q=1.5), example_inputs={"x": torch.randn(2, 3, 5)})
    return model


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")


def analytic(x: torch.Tensor, lin: nn.Linear, q: float, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mean(|h|^q) over the real rows of h = lin(x), and its gradient with respect to lin.weight."""
    h = (x @ lin.weight.T + lin.bias).detach()
    real = rows.bool()
    n = real.sum() * h.shape[-1]
    value = (h.abs() ** q)[real].sum() / n
    dh = q * h.abs() ** (q - 1) * h.sign() * rows[..., None] / n  # d value / d h
    return value, dh.reshape(-1, h.shape[-1]).T @ x.reshape(-1, x.shape[-1])


@pytest.mark.parametrize("q", [1.0, 1.5, 3.0])
def test_value_and_gradient_equal_the_analytic_ones(q):
    model = toy().train()
    x = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    x[1, 2:] = 1e3  # padding holds garbage: it must not count
    penalty = LqPenalty(model, q=q, weight=0.7)
    model(x, attention_mask=mask)
    term = penalty()
    term.backward()
    va, ga = analytic(x, model.lin_a, q, mask.float())
    vb, gb = analytic(x, model.lin_b, q, mask.float())
    torch.testing.assert_close(term.detach(), 0.7 * (va + vb) / 2)
    torch.testing.assert_close(model.lin_a.weight.grad, 0.7 * ga / 2)
    torch.testing.assert_close(model.lin_b.weight.grad, 0.7 * gb / 2)
    assert set(penalty.site_means()) == {"drop_a", "drop_b"}


def test_padded_batch_equals_the_real_tokens_alone():
    model = tiny_gpt2()
    hf_sparseout.patch(model, SparseoutConfig(p=0.0))  # every site an identity: training mode is deterministic
    model.train()
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    penalty = LqPenalty(model, q=1.0, weight=1.0)
    model(ids, attention_mask=mask)
    batched = penalty.site_means()
    # Right padding in a causal model: the real tokens never see the pad, so per site the batch mean
    # is the token-weighted mean of the two sequences run alone.
    model(ids[:1])
    first = penalty.site_means()
    model(ids[1:, :4])
    second = penalty.site_means()
    assert set(batched) == set(first) and len(batched) == 5  # drop, 2 x (resid, mlp): attention left out
    for name, value in batched.items():
        want = (7 * first[name] + 4 * second[name]) / 11
        torch.testing.assert_close(value, want, rtol=1e-5, atol=0)
    penalty.remove()


def test_p0_sites_are_identities_and_give_the_penalty_alone():
    plain = tiny_gpt2().eval()
    model = tiny_gpt2()
    report = hf_sparseout.patch(model, SparseoutConfig(p=0.0, q=1.0))
    assert report.sparseout_sites and all(s.new_p == 0.0 for s in report.sparseout_sites)
    ids = torch.randint(0, 64, (2, 6))
    model.train()  # p = 0: training forward is deterministic and equals the eval forward of the plain model
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain(ids).logits)
    penalty = LqPenalty(model, q=1.0, weight=1e-2)
    model(ids, labels=ids).loss.backward()
    no_penalty = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    out = model(ids, labels=ids)
    (out.loss + penalty()).backward()
    changed = [n for n, p in model.named_parameters() if not torch.allclose(p.grad, no_penalty[n])]
    assert "transformer.h.0.mlp.c_fc.weight" in changed  # the penalty trains the layers before the sites


def test_targets_select_by_site_name_attention_only_when_named():
    model = tiny_gpt2()
    hf_sparseout.patch(model, SparseoutConfig(p=0.1, q=1.5))
    default = LqPenalty(model, q=1.0, weight=1.0)
    assert "transformer.h.0.attn.attn_dropout" not in default.site_names and len(default.site_names) == 5
    default.remove()
    named = LqPenalty(model, q=1.0, weight=1.0, targets=["attn_dropout"])
    assert named.site_names == ["transformer.h.0.attn.attn_dropout", "transformer.h.1.attn.attn_dropout"]
    model.train()
    model(torch.randint(0, 64, (1, 5)))
    # each attention row holds 5 keys (causal zeros included) summing to 1: mean(|x|) is exactly 1/5
    torch.testing.assert_close(named().detach(), torch.tensor(1 / 5), rtol=1e-5, atol=0)
    regex = LqPenalty(model, q=2.0, weight=1.0, targets=r".*h\.1\.mlp\.dropout")
    assert regex.site_names == ["transformer.h.1.mlp.dropout"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"q": 0.0, "weight": 1.0}, r"q must be a finite number > 0, got q=0.0"),
        ({"q": float("nan"), "weight": 1.0}, "q must be"),
        ({"q": True, "weight": 1.0}, "q must be"),
        ({"q": 1.0, "weight": -1.0}, r"weight must be a finite number >= 0"),
        ({"q": 1.0, "weight": float("inf")}, "weight must be"),
        ({"q": 1.0, "weight": 1.0, "targets": ["nope"]}, r"\['nope'\] match no patched site; sites: transformer\.drop"),
        ({"q": 1.0, "weight": 1.0, "targets": []}, "non-empty list"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    model = tiny_gpt2()
    hf_sparseout.patch(model, SparseoutConfig(p=0.1))
    with pytest.raises(ValueError, match=match):
        LqPenalty(model, **kwargs)


def test_unpatched_model_and_no_forward_are_errors():
    with pytest.raises(ValueError, match=r"no patched Sparseout sites: call hf_sparseout.patch.*p=0\.0"):
        LqPenalty(tiny_gpt2(), q=1.0, weight=1.0)
    penalty = LqPenalty(toy(), q=1.0, weight=1.0)
    with pytest.raises(RuntimeError, match="no selected site was called"):
        penalty()


def hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_remove_leaves_no_hooks():
    model = tiny_gpt2()
    hf_sparseout.patch(model, SparseoutConfig(p=0.1))
    before = hook_counts(model)
    penalty = LqPenalty(model, q=1.5, weight=1.0)
    assert hook_counts(model) == before + 2 + len(penalty.site_names)
    model(torch.randint(0, 64, (2, 6)))
    penalty.remove()
    assert hook_counts(model) == before
    with pytest.raises(RuntimeError, match="removed"):
        penalty()
    hf_sparseout.unpatch(model)
    assert hook_counts(model) == 0


def test_gradient_checkpointing_gives_the_same_penalty_and_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_gpt2()
        hf_sparseout.patch(model, SparseoutConfig(p=0.0))
        if checkpointing:
            enable_checkpointing(model)  # non-reentrant, through transformers' current API
        model.train()
        penalty = LqPenalty(model, q=1.5, weight=10.0)
        ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
        out = model(ids, labels=ids)
        (out.loss + penalty()).backward()  # recomputation in backward must not add to the sums
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize("q", [50.0, 4.5])
def test_q_beyond_float32_range_is_refused_with_a_hint(q):
    from hf_sparseout.errors import HfSparseoutError
    from hf_sparseout.regularizers import MAX_Q

    with pytest.raises(HfSparseoutError, match=rf"q must be at most {MAX_Q:g}, got q={q}") as info:
        LqPenalty(toy(), q=q, weight=1.0)
    assert isinstance(info.value, ValueError) and "underflow" in info.value.hint


def test_q_at_the_bound_gives_a_positive_penalty():
    from hf_sparseout.regularizers import MAX_Q

    model = toy()
    penalty = LqPenalty(model, q=MAX_Q, weight=1.0)
    model(torch.randn(2, 3, 5))
    value = penalty()
    assert torch.isfinite(value) and value > 0


@pytest.mark.parametrize("targets", [["nope"], [], 5])
def test_bad_targets_are_the_projects_errors_with_a_hint(targets):
    from hf_sparseout.errors import HfSparseoutError

    model = tiny_gpt2()
    hf_sparseout.patch(model, SparseoutConfig(p=0.1))
    with pytest.raises(HfSparseoutError) as info:
        LqPenalty(model, q=1.0, weight=1.0, targets=targets)
    assert info.value.hint and isinstance(info.value, ValueError)
