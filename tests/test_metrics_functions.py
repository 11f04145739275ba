"""Known values of the pure sparsity measures in hf_sparseout.metrics."""

import math

import numpy as np
import pytest
import torch

from hf_sparseout.metrics import (
    hoyer,
    l1_l2_ratio,
    mean_abs,
    near_zero_fraction,
    relative_near_zero_fraction,
    zero_fraction,
)


def test_one_hot_is_maximally_sparse():
    x = torch.zeros(3, 16)
    x[0, 3], x[1, 0], x[2, 15] = 5.0, -0.25, 1e-3
    torch.testing.assert_close(hoyer(x), torch.ones(3))
    torch.testing.assert_close(l1_l2_ratio(x), torch.ones(3))
    torch.testing.assert_close(zero_fraction(x), torch.full((3,), 15 / 16))
    torch.testing.assert_close(mean_abs(x), torch.tensor([5.0, 0.25, 1e-3]) / 16)


def test_constant_magnitude_is_dense():
    x = torch.tensor([[2.0, -2.0, 2.0, 2.0, -2.0], [0.1] * 5])
    torch.testing.assert_close(hoyer(x), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(l1_l2_ratio(x), torch.full((2,), math.sqrt(5)))
    torch.testing.assert_close(zero_fraction(x), torch.zeros(2))


def test_two_of_four_by_hand():
    # l1 = 2, l2 = sqrt(2): ratio sqrt(2), Hoyer (2 - sqrt(2)) / (2 - 1)
    x = torch.tensor([1.0, 0.0, -1.0, 0.0])
    assert hoyer(x).item() == pytest.approx(2 - math.sqrt(2), rel=1e-6)
    assert l1_l2_ratio(x).item() == pytest.approx(math.sqrt(2), rel=1e-6)
    assert zero_fraction(x).item() == 0.5


def test_zero_vector_and_single_feature_conventions():
    z = torch.zeros(2, 7)
    assert hoyer(z).tolist() == [1.0, 1.0]
    assert l1_l2_ratio(z).tolist() == [1.0, 1.0]
    assert zero_fraction(z).tolist() == [1.0, 1.0]
    assert mean_abs(z).tolist() == [0.0, 0.0]
    single = torch.tensor([[3.0], [0.0], [-1.0]])
    assert hoyer(single).tolist() == [1.0, 1.0, 1.0]
    assert not torch.isnan(hoyer(torch.zeros(4, 1))).any()


def test_hoyer_is_scale_invariant_in_range_and_matches_ratio():
    x = torch.randn(64, 33, generator=torch.Generator().manual_seed(0))
    h = hoyer(x)
    assert ((h >= 0) & (h <= 1)).all()
    torch.testing.assert_close(hoyer(1000 * x), h)
    n = x.shape[-1]
    torch.testing.assert_close(h, (math.sqrt(n) - l1_l2_ratio(x)) / (math.sqrt(n) - 1))


def test_shapes_keep_leading_dims():
    x = torch.randn(2, 3, 4, 5)
    for fn in (hoyer, l1_l2_ratio, zero_fraction, mean_abs):
        assert fn(x).shape == (2, 3, 4)
    assert near_zero_fraction(x, 0.1).shape == (2, 3, 4)


def test_relu_gaussian_zero_fraction_is_one_half():
    x = torch.relu(torch.randn(256, 4096, generator=torch.Generator().manual_seed(1)))
    # 1M Bernoulli(1/2) draws: std 5e-4
    assert zero_fraction(x).mean().item() == pytest.approx(0.5, abs=3e-3)


def test_gaussian_l1_l2_ratio_and_hoyer_large_n():
    n = 4096
    x = torch.randn(128, n, generator=torch.Generator().manual_seed(2))
    # E|a| = sqrt(2/pi), E a^2 = 1: l1/l2 -> sqrt(2 n / pi), Hoyer -> (sqrt(n) - that) / (sqrt(n) - 1)
    ratio = math.sqrt(2 * n / math.pi)
    assert l1_l2_ratio(x).mean().item() == pytest.approx(ratio, rel=2e-3)
    assert hoyer(x).mean().item() == pytest.approx((math.sqrt(n) - ratio) / (math.sqrt(n) - 1), abs=2e-3)
    assert mean_abs(x).mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=2e-3)


def test_near_zero_fraction_of_uniform_and_gaussian():
    g = torch.Generator().manual_seed(3)
    u = torch.rand(512, 2048, generator=g) * 2 - 1
    assert near_zero_fraction(u, 0.1).mean().item() == pytest.approx(0.1, abs=3e-3)
    x = torch.randn(512, 2048, generator=g)
    assert near_zero_fraction(x, 0.5).mean().item() == pytest.approx(math.erf(0.5 / math.sqrt(2)), abs=3e-3)
    # the default threshold is 1e-3: [1e-3 counts, 2e-3 does not]
    assert near_zero_fraction(torch.tensor([1e-3, 2e-3, 0.0, -5e-4])).item() == 0.75
    assert near_zero_fraction(x, 0.0).tolist() == zero_fraction(x).tolist()


def _relative_near_zero_numpy(x: np.ndarray, ratio: float) -> np.ndarray:
    """Reference: per row, the share of entries with |a| <= ratio * sqrt(mean(a**2)), in float64."""
    a = np.abs(x.astype(np.float64))
    rms = np.sqrt((a**2).mean(-1, keepdims=True))
    return (a <= ratio * rms).mean(-1)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0])
def test_relative_near_zero_fraction_matches_numpy(ratio):
    g = torch.Generator().manual_seed(5)
    # rows on very different scales, some exact zeros, a heavy tail, a zero row
    x = torch.randn(6, 7, 50, generator=g) * torch.logspace(-4, 3, 6).reshape(6, 1, 1)
    x[0, :, :10] = 0
    x[1] = x[1] ** 3
    x[2, 3] = 0
    got = relative_near_zero_fraction(x, ratio)
    assert got.shape == (6, 7)
    np.testing.assert_allclose(got.numpy(), _relative_near_zero_numpy(x.numpy(), ratio), rtol=0, atol=1e-7)
    assert got[2, 3].item() == 1.0  # the zero vector is all near zero, as in zero_fraction


def test_relative_near_zero_fraction_is_scale_free_and_known():
    x = torch.randn(512, 2048, generator=torch.Generator().manual_seed(6))
    base = relative_near_zero_fraction(x)
    torch.testing.assert_close(relative_near_zero_fraction(x * 1e-3), base)
    # Gaussian rows: rms -> 1, so |a| <= 0.1 has probability erf(0.1 / sqrt(2)); the absolute
    # measure at 1e-3 falls to ~0 on the same data scaled up, the relative one does not move.
    assert base.mean().item() == pytest.approx(math.erf(0.1 / math.sqrt(2)), abs=2e-3)
    assert near_zero_fraction(x * 1e-3).mean().item() > 0.5 > near_zero_fraction(x).mean().item()
    k_sparse = torch.zeros(3, 40)
    k_sparse[:, :8] = torch.tensor([2.0, -2.0, 2.0, 2.0, -2.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(relative_near_zero_fraction(k_sparse), torch.full((3,), 32 / 40))
    with pytest.raises(ValueError, match="ratio"):
        relative_near_zero_fraction(x, -0.1)


def test_bfloat16_accumulates_in_float32():
    n = 3001
    x = torch.ones(2, n, dtype=torch.bfloat16)
    x[1, 0] = 0
    ratio = l1_l2_ratio(x)
    assert ratio.dtype == torch.float32
    # in bfloat16 sqrt(3001) = 54.78 would round to 54.75
    assert ratio[0].item() == pytest.approx(math.sqrt(n), rel=1e-6)
    assert zero_fraction(x)[1].item() == pytest.approx(1 / n, rel=1e-6)
    y = torch.randn(8, 100, generator=torch.Generator().manual_seed(4)).bfloat16()
    for fn in (hoyer, l1_l2_ratio, zero_fraction, mean_abs, near_zero_fraction, relative_near_zero_fraction):
        torch.testing.assert_close(fn(y), fn(y.float()))
        assert fn(y).dtype == torch.float32


def test_float64_stays_float64():
    assert hoyer(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_bad_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        hoyer(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        near_zero_fraction(torch.ones(3), -1.0)
    with pytest.raises(ValueError, match="0-d"):
        zero_fraction(torch.tensor(1.0))
