"""The Sparseout op (``hf_sparseout.sparseout``) on CPU: forward formula, mask, moments, gradients, dtypes, arguments.

The float64 oracle lives in ``sparseout_oracle.py`` (written from the formulas); the op's mask is
reconstructed by re-seeding and calling ``draw_mask`` (a claim checked in ``test_mask_reconstruction``).
Saved-tensor memory, ``torch.compile`` and checkpointing are in ``test_op_sparseout_graph.py``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from sparseout_oracle import MAX_SCALE, factor64, factor_bound, mask_for, noise64, out64

import hf_sparseout
from hf_sparseout.ops.sparseout import GRADIENT_MODES, draw_mask

FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
LOW = (torch.float32, torch.bfloat16, torch.float16)
Q_NOT_2 = (0.0, 0.5, 1.0, 1.5, 2.5, 3.0, 4.0)
SEED = 1234


def _compute_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the dtype the computation should happen in (float32 for 16-bit inputs)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def _sample(dtype: torch.dtype, n: int = 2048, seed: int = 0) -> torch.Tensor:
    """Normal values over several magnitudes plus exact zeros of both signs and +-1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 3, (n,), generator=g)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.0, 1e-3, -1e-3], dtype=torch.float64)
    return torch.cat([x, special]).to(dtype)


def _assert_close_to_oracle(got: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, p: float, q: float) -> None:
    """``got`` (in ``x.dtype``) equals the float64 formula up to rounding: one rounding to the output
    dtype plus a few compute-dtype ulps of each of the two summands (cancellation makes the second term
    necessary)."""
    dtype = x.dtype
    fi = torch.finfo(dtype)
    want = out64(x, mask, p, q)
    term = (want - x.double()).abs()
    want_sat = want.clamp(-fi.max, fi.max)
    tol = fi.eps * want_sat.abs() + 8 * _compute_eps(dtype) * (x.double().abs() + term) + fi.tiny * fi.eps
    err = (got.double() - want_sat).abs()
    bad = err > tol
    assert not bad.any(), (
        f"{int(bad.sum())} elements off, e.g. x={x[bad][:3].tolist()} got={got[bad][:3].tolist()} "
        f"want={want[bad][:3].tolist()}"
    )


def test_documented_constants() -> None:
    assert hf_sparseout.MAX_SCALE == MAX_SCALE == 1e4
    assert GRADIENT_MODES == ("reference", "exact")


# --------------------------------------------------------------------------------------- mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("q", [0.5, 3.0])
def test_mask_reconstruction(p: float, q: float) -> None:
    """Re-seeding and calling draw_mask gives the op's mask: same RNG consumption, same output."""
    x = _sample(torch.float64)
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q)
    state_after_op = torch.get_rng_state()
    torch.manual_seed(SEED)
    m = draw_mask(x, p)
    assert torch.equal(torch.get_rng_state(), state_after_op), "draw_mask consumes the RNG differently"
    assert m.dtype == torch.bool and m.shape == x.shape
    _assert_close_to_oracle(y, x, m, p, q)
    # the check is discriminating: the complementary mask (or another seed's mask) does not explain y
    nonzero = x != 0
    assert not torch.allclose(y[nonzero], out64(x, ~m, p, q)[nonzero])
    other = mask_for(x, p, SEED + 1)
    assert not torch.equal(other, m)


def test_mask_reconstruction_non_contiguous() -> None:
    x = _sample(torch.float32, n=4096)[:4096].view(64, 64).t()
    assert not x.is_contiguous()
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=0.3, q=1.5)
    _assert_close_to_oracle(y, x, mask_for(x, 0.3, SEED), 0.3, 1.5)


# ------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("q", Q_NOT_2)
@pytest.mark.parametrize("p", [0.1, 0.7])
def test_forward_matches_float64_formula(dtype: torch.dtype, q: float, p: float) -> None:
    x = _sample(dtype)
    x_before = x.clone()
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(x, x_before), "inplace=False modified the input"
    _assert_close_to_oracle(y, x, mask_for(x, p, SEED), p, q)
    # sign(0) = 0: a zero stays exactly zero, for q = 0 too
    assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_q2_is_bitwise_dropout(dtype: torch.dtype, p: float, gradient: str) -> None:
    """q = 2: forward, input gradient and RNG consumption bit-identical to F.dropout on CPU."""
    x0 = _sample(dtype)
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    x1, x2 = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    torch.manual_seed(SEED)
    y1 = hf_sparseout.sparseout(x1, p=p, q=2.0, gradient=gradient)
    s1 = torch.get_rng_state()
    torch.manual_seed(SEED)
    y2 = F.dropout(x2, p=p, training=True)
    assert torch.equal(s1, torch.get_rng_state())
    assert y1.dtype == dtype
    assert torch.equal(y1, y2)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x1.grad, x2.grad)
    # and dropout is the q = 2 formula: kept elements scaled by 1/(1-p), dropped ones zero
    _assert_close_to_oracle(y1.detach(), x0, y2.detach() != 0, p, 2.0)


@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_identity_when_not_training_or_p0(q: float, dtype: torch.dtype) -> None:
    x = _sample(dtype, n=64).requires_grad_()
    for kwargs in ({"p": 0.5, "training": False}, {"p": 0.0}, {"p": 0, "training": True, "inplace": True}):
        state = torch.get_rng_state()
        assert hf_sparseout.sparseout(x, q=q, **kwargs) is x, kwargs
        assert torch.equal(torch.get_rng_state(), state), "identity consumed the RNG"


@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_p1_gives_zeros(q: float, dtype: torch.dtype, gradient: str) -> None:
    x = _sample(dtype, n=64).requires_grad_()
    y = hf_sparseout.sparseout(x, p=1.0, q=q, gradient=gradient)
    assert y.dtype == dtype
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.zeros_like(x))


# ----------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("q", [0.5, 1.5, 3.0])
def test_monte_carlo_moments(p: float, q: float) -> None:
    """Mean x, variance p/(1-p)|x|^q and keep rate 1-p, within 6 standard errors of N samples.

    noise = m/(1-p) - 1 takes p/(1-p) (prob 1-p) and -1 (prob p): E n = 0, E n^2 = p/(1-p),
    E n^4 = (1-p)(p/(1-p))^4 + p. With s = |x|^(q/2), d = out - x = s n; the second moment of d
    about its known mean 0 has standard error s^2 sqrt((E n^4 - (E n^2)^2) / N).

    Power: at N = 20000 the 6-sigma band on the second moment is at most 11.3% of it (p = 0.1),
    6.4% (p = 0.8) and ~0 (p = 0.5, where n = +-1 exactly); a wrong exponent q +- 0.25 changes the
    prediction at |x| = 3 by a factor 3^(+-1/4) (+32% / -24%) and at |x| = 0.05 by 0.05^(+-1/4)
    (x0.47 / x2.1), so it fails. This is asserted below, not just claimed.
    """
    n_draws = 20000
    xs = torch.tensor([0.05, -0.3, 1.0, 2.0, -3.0], dtype=torch.float64)
    x = xs.expand(n_draws, -1).contiguous()
    torch.manual_seed(SEED)
    d = hf_sparseout.sparseout(x, p=p, q=q) - x

    en2 = p / (1 - p)
    en4 = (1 - p) * (p / (1 - p)) ** 4 + p
    s2 = xs.abs() ** q  # s^2 = |x|^q
    var_pred = en2 * s2

    mean = d.mean(0)
    mean_tol = 6 * torch.sqrt(var_pred / n_draws)
    assert torch.all((mean).abs() <= mean_tol), (mean, mean_tol)

    m2 = (d * d).mean(0)
    m2_tol = 6 * s2 * math.sqrt((en4 - en2**2) / n_draws) + 1e-9 * var_pred
    assert torch.all((m2 - var_pred).abs() <= m2_tol), (m2, var_pred, m2_tol)
    for dq in (-0.25, 0.25):  # the bound has the power to reject a wrong exponent
        wrong = en2 * xs.abs() ** (q + dq)
        assert torch.any((m2 - wrong).abs() > m2_tol), f"q{dq:+} would pass too"

    kept = d * torch.sign(x) > 0  # kept: d = s p/(1-p) has the sign of x; dropped: d = -s
    rate = kept.double().mean()
    rate_tol = 6 * math.sqrt(p * (1 - p) / kept.numel())
    assert abs(rate - (1 - p)) <= rate_tol, (rate, 1 - p, rate_tol)
    assert abs(rate - p) > rate_tol or p == 0.5  # p and 1-p swapped would fail (p != 0.5)


# --------------------------------------------------------------------------------- gradients


def _grad_sample(dtype: torch.dtype) -> torch.Tensor:
    """Normal values plus values where the clamp is active (tiny |x| for q < 2, large |x| for q > 2)."""
    clamp_zone = torch.tensor([1e-9, -1e-7, 3e-6, 2e4, -5e4, 1e5], dtype=torch.float64)
    return torch.cat([_sample(torch.float64, n=1024, seed=3), clamp_zone]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 1.5, 3.0, 4.0])
@pytest.mark.parametrize("p", [0.2, 0.9])
def test_gradient_matches_float64_factor(dtype: torch.dtype, gradient: str, q: float, p: float) -> None:
    x = _grad_sample(dtype).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q, gradient=gradient)
    y.backward(g)
    mask = mask_for(x, p, SEED)
    f = factor64(x.detach(), mask, p, q, gradient)
    want = g.double() * f
    tol = 16 * _compute_eps(dtype) * g.double().abs() * (1.0 + (f - 1.0).abs())
    err = (x.grad.double() - want).abs()
    assert torch.all(err <= tol), (x[err > tol][:4], x.grad[err > tol][:4], want[err > tol][:4])


@pytest.mark.parametrize("q", [0.5, 1.5, 3.0, 4.0])
@pytest.mark.parametrize("p", [0.2, 0.9])
def test_reference_factor_is_out_over_x(q: float, p: float) -> None:
    """The oracle's reference factor is the authors' out / x wherever the clamp is inactive,
    and the exact factor is the derivative of the float64 formula (central differences)."""
    x = _sample(torch.float64, n=512, seed=4)
    x = x[(x.abs() > 1e-3) & (x.abs() < 1e3)]
    mask = mask_for(x, p, SEED)
    torch.testing.assert_close(factor64(x, mask, p, q, "reference"), out64(x, mask, p, q) / x, rtol=1e-12, atol=0)
    h = 1e-6 * x.abs()
    numeric = (out64(x + h, mask, p, q) - out64(x - h, mask, p, q)) / (2 * h)
    torch.testing.assert_close(factor64(x, mask, p, q, "exact"), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.5, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("p", [0.3, 0.8])
def test_exact_gradient_gradcheck(q: float, p: float) -> None:
    """gradient="exact" is the true derivative (float64, inputs away from 0, fixed mask by re-seeding)."""
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(6, 5, generator=g, dtype=torch.float64) * 1.5 + 0.5) * torch.sign(torch.randn(6, 5, generator=g))
    x.requires_grad_()

    def fn(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(SEED)
        return hf_sparseout.sparseout(t, p=p, q=q, gradient="exact")

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)

    def fn_ref(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(SEED)
        return hf_sparseout.sparseout(t, p=p, q=q, gradient="reference")

    # the authors' rule out/x is not the derivative unless q = 2: gradcheck can fail
    passed = torch.autograd.gradcheck(fn_ref, (x,), eps=1e-6, atol=1e-6, rtol=1e-5, raise_exception=False)
    assert passed == (q == 2.0)


# ---------------------------------------------------------------------------- dtype matrix


def _edge_values(dtype: torch.dtype) -> torch.Tensor:
    fi = torch.finfo(dtype)
    sub = fi.tiny * fi.eps  # smallest subnormal
    vals = [0.0, -0.0, sub, -sub, 7 * sub, fi.tiny / 2, -fi.tiny, fi.tiny, 1e-3, -0.5, 1.0, 3.0]
    vals += [fi.max, -fi.max, fi.max / 2, -fi.max / 3, fi.max / 1e3, math.sqrt(fi.max) * 2]
    x = torch.tensor(vals, dtype=torch.float64).to(dtype)
    assert torch.isfinite(x).all() and (x[2:4] != 0).all(), "edge values must be finite, subnormals non-zero"
    return x.repeat(16)  # several mask draws per value


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize(
    "q",
    [
        0.0,
        0.5,
        1.0,
        1.5,
        2.0,  # F.dropout + a no-grad clamp: still bit-identical to dropout where dropout is finite
        2.5,
        3.0,
        4.0,
    ],
)
@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("p", [0.5, 0.9])
def test_dtype_matrix_finite_saturating_bounded(dtype: torch.dtype, q: float, gradient: str, p: float) -> None:
    """Exact zeros, subnormals and values near the dtype max: finite forward and backward in the input
    dtype, saturation at +-max where the true value overflows, |factor| within the documented bound."""
    fi = torch.finfo(dtype)
    x = _edge_values(dtype).requires_grad_()
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q, gradient=gradient)
    assert y.dtype == dtype
    assert torch.isfinite(y).all(), x[~torch.isfinite(y)]
    mask = mask_for(x, p, SEED)
    want = out64(x.detach(), mask, p, q)
    over = want.abs() > fi.max
    assert torch.equal(y.detach()[over].double(), torch.sign(want[over]) * fi.max)
    _assert_close_to_oracle(y.detach(), x.detach(), mask, p, q)

    y.backward(torch.ones_like(y))
    assert x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all(), x[~torch.isfinite(x.grad)]
    bound = min(factor_bound(p), fi.max)
    assert x.grad.double().abs().max() <= bound * (1 + fi.eps)


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 3.0, 4.0])
@pytest.mark.parametrize("p", [0.5, 0.99])
def test_factor_bound_float64(gradient: str, q: float, p: float) -> None:
    """|factor| <= 1 + MAX_SCALE * max(1, p/(1-p)) for every input (zeros, 1e-300, 1e300), and where the
    power term saturates (tiny |x| for q < 2, huge |x| for q > 2) the factor is exactly 1 + MAX_SCALE * noise."""
    x = torch.tensor([0.0, 1e-300, 1e-12, 1e-6, 0.1, 1.0, 10.0, 1e6, 1e12, 1e300], dtype=torch.float64)
    x = torch.cat([x, -x]).repeat(32).requires_grad_()
    torch.manual_seed(SEED)
    hf_sparseout.sparseout(x, p=p, q=q, gradient=gradient).backward(torch.ones_like(x))
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() <= factor_bound(p) * (1 + 1e-12)
    noise = noise64(mask_for(x, p, SEED), p)
    ax = x.detach().abs()
    coef, expo = (1.0, (q - 2) / 2) if gradient == "reference" else (q / 2, q / 2 - 1)
    saturated = (coef * ax**expo >= MAX_SCALE) if coef else torch.zeros_like(ax, dtype=torch.bool)
    assert saturated.any() == (not (gradient == "exact" and q == 0.0))
    torch.testing.assert_close(x.grad[saturated], 1 + MAX_SCALE * noise[saturated], rtol=1e-12, atol=0)
    if gradient == "exact" and q == 0.0:  # out = x + sign(x) * noise: derivative 1, also at x = 0
        assert torch.equal(x.grad, torch.ones_like(x))


# -------------------------------------------------------------------------------- arguments


BAD_ARGS = [
    ({"p": -0.1}, "-0.1"),
    ({"p": 1.5}, "1.5"),
    ({"p": float("nan")}, "nan"),
    ({"p": float("inf")}, "inf"),
    ({"p": -float("inf")}, "-inf"),
    ({"q": -1.0}, "-1.0"),
    ({"q": -1e-9}, "-1e-09"),
    ({"q": float("nan")}, "nan"),
    ({"q": float("inf")}, "inf"),
    ({"gradient": "bogus"}, "'bogus'"),
    ({"gradient": "Exact"}, "'Exact'"),
]


@pytest.mark.parametrize(("kwargs", "shown"), BAD_ARGS, ids=[str(k) for k, _ in BAD_ARGS])
def test_bad_arguments_raise_value_error(kwargs: dict, shown: str) -> None:
    (name,) = kwargs
    with pytest.raises(ValueError, match=re.escape(f"{name}={shown}")):
        hf_sparseout.sparseout(torch.randn(4), **kwargs)
    # also rejected in eval mode (no silent acceptance when the op is an identity)
    with pytest.raises(ValueError, match=name):
        hf_sparseout.sparseout(torch.randn(4), training=False, **kwargs)


@pytest.mark.parametrize(
    "bad",
    [torch.arange(4), torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.complex64), [1.0, 2.0], 3.0],
    ids=["int64", "bool", "complex64", "list", "float"],
)
def test_non_floating_input_raises_type_error(bad) -> None:
    with pytest.raises(TypeError, match="floating"):
        hf_sparseout.sparseout(bad, p=0.5, q=1.5)
    with pytest.raises(TypeError, match="floating"):
        hf_sparseout.sparseout(bad, p=0.5, q=1.5, training=False)
