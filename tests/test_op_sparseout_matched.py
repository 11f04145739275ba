"""Scale-matched Sparseout (``noise="matched"``): the scale c, q = 2, homogeneity, variance, gradients, config.

``c = sqrt(sum(x**2) / sum(|x|**q))`` is recomputed here in float64 from its definition (not from the
library), and the op's mask is reconstructed by re-seeding (``sparseout_oracle.mask_for``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from architectures import batch, build
from sparseout_oracle import MAX_SCALE, mask_for, noise64

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.ops.sparseout import matched_scale

SEED = 4321
Q_NOT_2 = (0.0, 0.5, 1.0, 1.5, 3.0, 4.0)


def _x(dtype: torch.dtype = torch.float64, n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Activations over four orders of magnitude, with exact zeros (like a transformer's, mean |x| ~ 0.1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-3, 1, (n,), generator=g)
    x[:5] = torch.tensor([0.0, -0.0, 0.0, 1e-3, -2.0])
    return x.to(dtype)


def c64(x: torch.Tensor, q: float) -> float:
    """The definition, in float64; ``|0| ** 0`` counts as 0 (sign(0) = 0 puts no noise there)."""
    xd = x.double()
    nz = xd[xd != 0].abs()
    return float(((nz**2).sum() / (nz**q).sum()).sqrt())


def out64(x: torch.Tensor, mask: torch.Tensor, p: float, q: float, c: float) -> torch.Tensor:
    xd = x.double()
    return xd + c * torch.sign(xd) * xd.abs() ** (q / 2) * noise64(mask, p)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q", (*Q_NOT_2, 2.0))
def test_scale_is_the_definition(dtype: torch.dtype, q: float) -> None:
    x = _x(dtype)
    c = matched_scale(x, q)
    assert c.dim() == 0 and not c.requires_grad
    rtol = 1e-12 if dtype == torch.float64 else 2e-5  # float32 sums over 4096 terms
    assert abs(float(c) - c64(x, q)) <= rtol * c64(x, q)
    if q == 2.0:
        assert abs(float(c) - 1.0) < 1e-6


def test_scale_of_zero_input_is_one_and_extremes_stay_finite() -> None:
    for x in (torch.zeros(7), torch.zeros(0), torch.full((3,), -0.0)):
        assert float(matched_scale(x, 1.5)) == 1.0
    # sums that would overflow or underflow float32 (x**2 of 1e30, |x|**4 of 1e-30) are normalised first
    for v in (1e30, 1e-30):
        x = torch.tensor([v, -v / 3, v / 7], dtype=torch.float32)
        for q in (0.5, 4.0):
            c, want = float(matched_scale(x, q)), c64(x, q)
            assert abs(c - want) <= 1e-5 * want, (v, q, c, want)
    assert float(matched_scale(torch.tensor([1.0, float("inf")]), 1.0)) == 1.0


def test_all_zero_input_gives_zero_output_and_finite_gradients() -> None:
    x = torch.zeros(64, requires_grad=True)
    for gradient in ("reference", "exact"):
        y = hf_sparseout.sparseout(x, p=0.3, q=1.5, noise="matched", gradient=gradient)
        assert torch.equal(y, torch.zeros(64))
        (gx,) = torch.autograd.grad(y, x, torch.ones(64))
        assert torch.isfinite(gx).all()


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_q2_matched_is_bitwise_raw_and_dropout(gradient: str, dtype: torch.dtype) -> None:
    x0 = _x(dtype)
    outs, grads = [], []
    for fn in (
        lambda x: hf_sparseout.sparseout(x, 0.3, 2.0, gradient=gradient, noise="matched"),
        lambda x: hf_sparseout.sparseout(x, 0.3, 2.0, gradient=gradient),
        lambda x: F.dropout(x, 0.3, training=True),
    ):
        x = x0.clone().requires_grad_()
        torch.manual_seed(SEED)
        y = fn(x)
        y.backward(torch.ones_like(y))
        outs.append(y.detach())
        grads.append(x.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q", Q_NOT_2)
@pytest.mark.parametrize("p", [0.1, 0.6])
def test_forward_matches_float64_with_the_same_mask(dtype: torch.dtype, q: float, p: float) -> None:
    x = _x(dtype)
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q, noise="matched")
    want = out64(x, mask_for(x, p, SEED), p, q, c64(x, q))
    eps = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2**-7}[dtype]
    term = (want - x.double()).abs()
    assert torch.all((y.double() - want).abs() <= 4 * eps * (x.double().abs() + term) + 1e-30)
    assert torch.equal(y[x == 0], torch.zeros_like(y[x == 0]))


@pytest.mark.parametrize("q", Q_NOT_2)
@pytest.mark.parametrize("a", [1e-3, 0.37, 8.0, 2.5e3])
def test_degree_one_homogeneous_like_dropout(q: float, a: float) -> None:
    """sparseout(a x) == a sparseout(x) for a > 0 with the same mask; raw noise is not (q != 2)."""
    x = _x(torch.float64)
    outs = {}
    for noise in ("matched", "raw"):
        torch.manual_seed(SEED)
        y1 = hf_sparseout.sparseout(x, p=0.3, q=q, noise=noise)
        torch.manual_seed(SEED)
        ya = hf_sparseout.sparseout(a * x, p=0.3, q=q, noise=noise)
        outs[noise] = (ya, a * y1)
    torch.testing.assert_close(*outs["matched"], rtol=1e-10, atol=0)
    if q != 2.0:  # the property is not vacuous: raw Sparseout scales like a ** (q / 2) in its noise
        assert not torch.allclose(*outs["raw"], rtol=1e-3, atol=0)


@pytest.mark.parametrize("q", [0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_total_noise_variance_matches_dropout(q: float, p: float) -> None:
    """E sum (out - x)**2 = p/(1-p) sum x**2 for matched noise, as for dropout; raw noise is far off.

    Monte Carlo over 64 draws of 4096 elements; the band is 6 standard errors of the mean of the draws'
    sums, estimated from the draws themselves.
    """
    x = _x(torch.float64) * 0.1  # small activations, where raw noise at q < 2 is much larger than dropout's
    want = p / (1 - p) * float((x**2).sum())
    torch.manual_seed(SEED)
    sums = {}
    for name, fn in {
        "matched": lambda: hf_sparseout.sparseout(x, p=p, q=q, noise="matched"),
        "raw": lambda: hf_sparseout.sparseout(x, p=p, q=q),
        "dropout": lambda: F.dropout(x, p, training=True),
    }.items():
        sums[name] = torch.tensor([float(((fn() - x) ** 2).sum()) for _ in range(64)], dtype=torch.float64)
    for name in ("matched", "dropout"):
        band = 6 * float(sums[name].std()) / 8
        assert abs(float(sums[name].mean()) - want) <= band, (name, float(sums[name].mean()), want, band)
    raw_pred = p / (1 - p) * float((x.abs() ** q).sum())
    assert abs(raw_pred - want) > 10 * float(sums["raw"].std()) / 8  # the test tells raw from matched


@pytest.mark.parametrize("gradient", ["reference", "exact"])
@pytest.mark.parametrize("q", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gradient_treats_c_as_a_constant(gradient: str, q: float, dtype: torch.dtype) -> None:
    """grad * (1 + min(coef * c * |x|**e, MAX_SCALE) * noise): c scales the power term, no gradient through c."""
    x = torch.cat([_x(dtype, n=1024, seed=2), torch.tensor([1e-9, 3e4], dtype=dtype)]).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    p = 0.3
    torch.manual_seed(SEED)
    y = hf_sparseout.sparseout(x, p=p, q=q, gradient=gradient, noise="matched")
    y.backward(g)
    coef, expo = (1.0, (q - 2) / 2) if gradient == "reference" else (q / 2, q / 2 - 1)
    c = c64(x.detach(), q)
    ax = x.detach().double().abs()
    factor = 1 + (coef * c * ax**expo).clamp(max=MAX_SCALE) * noise64(mask_for(x, p, SEED), p)
    want = g.double() * factor
    eps = 1e-13 if dtype == torch.float64 else 2e-6
    assert torch.all((x.grad.double() - want).abs() <= 8 * eps * g.double().abs() * factor.abs().clamp(min=1))


def test_exact_gradient_is_the_derivative_with_c_fixed() -> None:
    """Central differences of the float64 formula with c frozen at its value equal the op's exact gradient."""
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(40, generator=g, dtype=torch.float64) + 0.5) * torch.sign(torch.randn(40, generator=g))
    p, q = 0.4, 1.5
    mask = mask_for(x, p, SEED)
    c = c64(x, q)
    xr = x.clone().requires_grad_()
    torch.manual_seed(SEED)
    hf_sparseout.sparseout(xr, p=p, q=q, gradient="exact", noise="matched").sum().backward()
    h = 1e-6
    numeric = torch.stack(
        [
            (out64(x + h * e, mask, p, q, c) - out64(x - h * e, mask, p, q, c)).sum() / (2 * h)
            for e in torch.eye(40, dtype=torch.float64)
        ]
    )
    torch.testing.assert_close(xr.grad, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------- arguments, module, config


def test_bad_noise_is_a_value_error_everywhere() -> None:
    for call in (
        lambda: hf_sparseout.sparseout(torch.randn(3), 0.1, 1.5, noise="scaled"),
        lambda: hf_sparseout.sparseout(torch.randn(3), 0.1, 1.5, training=False, noise="scaled"),
        lambda: hf_sparseout.Sparseout(0.1, 1.5, noise="scaled"),
        lambda: SparseoutConfig(noise="scaled"),
    ):
        with pytest.raises(ValueError, match=r"noise='scaled'.*'raw'.*'matched'|noise must be one of"):
            call()


def test_module_passes_noise_and_shows_it() -> None:
    layer = hf_sparseout.Sparseout(p=0.3, q=1.5, noise="matched")
    assert "noise='matched'" in repr(layer) and "noise" not in repr(hf_sparseout.Sparseout(0.3, 1.5))
    x = _x(torch.float32)
    torch.manual_seed(SEED)
    y = layer(x)
    torch.manual_seed(SEED)
    torch.testing.assert_close(y, hf_sparseout.sparseout(x, 0.3, 1.5, noise="matched"), rtol=0, atol=0)
    assert torch.equal(layer.eval()(x), x)


def test_config_round_trip_and_format_1_loads_as_raw() -> None:
    cfg = SparseoutConfig(q=1.0, noise="matched")
    data = cfg.to_dict()
    assert data["noise"] == "matched" and data["format_version"] >= 2
    assert SparseoutConfig.from_json(cfg.to_json()).noise == "matched"
    old = {k: v for k, v in data.items() if k != "noise"} | {"format_version": 1}
    assert SparseoutConfig.from_dict(old).noise == "raw"


def test_patch_gives_every_site_the_noise_mode() -> None:
    model = build("gpt2", "causal-lm", "eager")
    hf_sparseout.patch(model, SparseoutConfig(q=1.5, noise="matched"))
    layers = [m for m in model.modules() if isinstance(m, hf_sparseout.Sparseout)]
    assert layers and all(m.noise == "matched" for m in layers)
    model.train()
    out = model(**batch(model), use_cache=False)
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    hf_sparseout.unpatch(model)
    assert not any(isinstance(m, hf_sparseout.Sparseout) for m in model.modules())
