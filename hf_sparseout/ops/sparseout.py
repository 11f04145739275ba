"""The Sparseout op (Khan & Stavness, 2019): eager PyTorch implementation.

With drop probability ``p`` and a keep mask ``m ~ Bernoulli(1 - p)``::

    noise = m / (1 - p) - 1
    out   = x + sign(x) * |x| ** (q / 2) * noise        (training only)

``q = 2`` is inverted dropout (and is routed to :func:`torch.nn.functional.dropout`,
so it is bit-identical to it under the same RNG state). ``E[out] = x`` and
``Var[out] = p / (1 - p) * |x| ** q``.

Two backward rules are offered:

* ``gradient="reference"`` (default) reproduces the authors' code: the input gradient
  is ``grad_out * factor`` with ``factor = out / x = 1 + |x| ** ((q - 2) / 2) * noise``
  treated as a constant.
* ``gradient="exact"`` back-propagates the true derivative
  ``d out / d x = 1 + (q / 2) * |x| ** (q / 2 - 1) * noise``.

Numerical safety. For ``q < 2`` both rules contain a negative power of ``|x|``, which is
infinite at ``x = 0`` (the authors add ``1e-12`` to ``|x|``, which is 0 in float16 and
still gives a factor of ``1e9`` at ``q = 0.5``). Here the power term (``|x| ** e`` times the
rule's coefficient, ``1`` or ``q / 2``) is clamped to at most :data:`MAX_SCALE` (``1e4``), so
``|factor| <= 1 + MAX_SCALE * max(1, p / (1 - p))`` for every input. The clamp only changes
values where that term exceeds ``1e4``: e.g. for ``q = 0.5`` where ``|x| < 4.6e-6``
(reference), for ``q = 4`` where ``|x| > 1e4`` (reference) or ``5e3`` (exact). ``sign(0) = 0``,
so a zero input stays zero for every ``q`` (``q = 0`` included). Half-precision inputs are
computed in float32 and the result is saturated to the dtype's finite range instead of
overflowing to ``inf``. ``q == 2`` is ``F.dropout`` followed by an in-place, no-grad clamp to the
finite range: an identity wherever dropout itself is finite (so still bit for bit dropout), and
saturation where dropout would overflow (``|x| > max * (1 - p)``); it costs one extra pass.

Scale-matched noise. ``noise="matched"`` multiplies each call's noise by
``c = sqrt(sum(x**2) / sum(|x|**q))`` (:func:`matched_scale`, computed without gradient over the whole
tensor), so the call's total noise variance equals dropout's at the same ``p`` while its spread over
magnitudes stays ``|x|**q``-shaped; the op is then degree-1 homogeneous like dropout. ``c`` is a constant in
both backward rules (it multiplies the power term, before the ``MAX_SCALE`` clamp). ``q == 2`` ignores it
(``c = 1`` exactly; still ``F.dropout``). An all-zero input has ``c = 1``.

Speed (CPU). When ``q`` is a multiple of 0.5 the powers are square-root chains (``|x| ** 0.75 =
sqrt(|x|) * sqrt(sqrt(|x|))``, ``|x| ** -0.25 = 1 / sqrt(sqrt(|x|))``), within 3 ulps of ``pow`` and several
times cheaper; the ``"compiled"`` backend (:mod:`hf_sparseout.ops.backend`) fuses the element-wise math
of each direction into one loop with ``torch.compile``.

Memory. Backward saves the input and a 1-byte boolean mask (``q != 2``): never a full-size
float noise or factor tensor. ``q == 2`` saves what :func:`torch.nn.functional.dropout` saves:
a 1-byte mask on CUDA (native dropout), the scaled noise in the input's dtype on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_sparseout.ops import backend as _backend

MAX_SCALE: float = 1e4
"""Upper bound on the power term (coefficient included) of both gradient rules (see module docstring)."""

GRADIENT_MODES: tuple[str, ...] = ("reference", "exact")
NOISE_MODES: tuple[str, ...] = ("raw", "matched")


def check_args(p: float, q: float, gradient: str = "reference", noise: str = "raw") -> None:
    """Raise ``ValueError`` naming the bad value if ``p``, ``q``, ``gradient`` or ``noise`` is invalid."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"sparseout: p must be a finite probability in [0, 1], got p={p!r}")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q < 0.0:
        raise ValueError(f"sparseout: q must be a finite number >= 0, got q={q!r}")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"sparseout: gradient must be one of {GRADIENT_MODES}, got gradient={gradient!r}")
    if noise not in NOISE_MODES:
        raise ValueError(
            f"sparseout: noise must be one of {NOISE_MODES}, got noise={noise!r} "
            "('raw': the paper's noise; 'matched': scaled to dropout's total variance)"
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op computes in: float32 for 16-bit floats, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def draw_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Draw the keep mask ``m ~ Bernoulli(1 - p)`` as a bool tensor shaped like ``x``.

    Consumes the RNG of ``x``'s device; re-seeding and calling again gives the same mask,
    which is how tests and activation checkpointing reproduce it. It is also the mask ``F.dropout`` draws
    after the same seed (a paired comparison of Sparseout and dropout runs sees the same masks).
    """
    return torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1.0 - float(p))


def _noise(mask: torch.Tensor, p: float, dtype: torch.dtype, c: torch.Tensor | None = None) -> torch.Tensor:
    """``c * (m / (1 - p) - 1)`` in one pass: ``c p / (1 - p)`` where kept, ``-c`` where dropped (``c = 1`` if None)."""
    keep = torch.tensor(p / (1.0 - p), dtype=dtype, device=mask.device)
    drop = torch.tensor(-1.0, dtype=dtype, device=mask.device)
    if c is not None:
        keep, drop = keep * c, drop * c
    return torch.where(mask, keep, drop)


def _saturate(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    fmax = torch.finfo(dtype).max
    return t.clamp_(-fmax, fmax).to(dtype)


def _abs_pow_(ax: torch.Tensor, e: float) -> torch.Tensor:
    """``ax ** e`` for ``ax = |x|`` (overwrites ``ax``), with torch.pow's values at 0, inf and NaN.

    When ``4 * e`` is an integer (``q`` a multiple of 0.5, the usual case) the power is a chain of square
    roots and products (``|x| ** 0.75 = sqrt(|x|) * sqrt(sqrt(|x|))``): a few correctly rounded operations,
    several times cheaper than ``pow`` on the CPU, within 3 ulps of it. Other exponents call ``pow``.
    """
    if e == 0.0:
        return ax.fill_(1.0)  # torch.pow(a, 0) = 1 for every a, NaN included
    n4 = 4.0 * abs(e)
    if n4 != int(n4) or n4 > 11:
        return ax.pow_(e)
    whole, frac = int(n4) // 4, int(n4) % 4
    if e < 0 and whole == 0:  # |e| < 1: reciprocal square roots, no separate reciprocal pass
        if frac == 2:
            return ax.rsqrt_()
        if frac == 1:
            return ax.sqrt_().rsqrt_()
        inv = ax.rsqrt_()  # frac == 3: a ** -0.75 = a ** -0.5 * sqrt(a ** -0.5)
        return inv.mul_(inv.sqrt())
    if frac == 0:
        res = ax if whole == 1 else ax.pow_(whole)  # integer powers are products in ATen
    elif frac == 2:
        if whole == 0:
            res = ax.sqrt_()
        else:
            root = ax.sqrt()
            res = (ax if whole == 1 else ax.pow_(whole)).mul_(root)
    elif frac == 1:
        res = ax.sqrt().sqrt_() if whole else ax.sqrt_().sqrt_()
        if whole:
            res = res.mul_(ax if whole == 1 else ax.pow_(whole))
    else:  # frac == 3: a ** 0.75 = sqrt(a) * sqrt(sqrt(a))
        root = ax.sqrt()
        res = root.mul_(root.sqrt())
        if whole:
            res = res.mul_(ax if whole == 1 else ax.pow_(whole))
    return res.reciprocal_() if e < 0 else res


def _signed_power(xc: torch.Tensor, q: float) -> torch.Tensor:
    """``sign(x) * |x| ** (q / 2)``, finite at ``x = 0`` for every ``q >= 0`` (``0`` there, ``sign(0) = 0``)."""
    if q == 0.0:
        return torch.sign(xc)  # copysign(|x| ** 0, x) would give +-1 at x = +-0
    if q == 4.0:
        return xc * xc.abs()
    return _abs_pow_(xc.abs(), q / 2.0).copysign_(xc)


def matched_scale(x: torch.Tensor, q: float) -> torch.Tensor:
    """``c = sqrt(sum(x**2) / sum(|x|**q))`` over all of ``x``, as a 0-d tensor in the compute dtype (no grad).

    With ``noise="matched"`` the noise is multiplied by ``c``, so the total noise variance of the call,
    ``p / (1 - p) * c**2 * sum(|x|**q)``, equals dropout's, ``p / (1 - p) * sum(x**2)``. ``c`` is a constant
    for autograd (both gradient rules treat it so). ``sparseout(a * x) == a * sparseout(x)`` for ``a > 0``
    (``c(a x) = a ** (1 - q/2) * c(x)``). Computed on ``|x| / max|x|`` (no overflow or underflow of the sums)
    and combined in float64 logs; the result is clamped to the compute dtype's normal range. Where it is
    undefined, i.e. ``x`` is all zeros (or holds inf or NaN), ``c = 1`` (raw noise). ``q = 0`` counts the
    nonzero elements (``|0| ** 0`` is taken as 0, as ``sign(0) = 0`` gives zero noise there). No host sync.
    """
    cdt = compute_dtype(x.dtype)
    with torch.no_grad():
        ax = x.detach().abs().to(cdt)
        top = ax.amax() if ax.numel() else torch.zeros((), dtype=cdt, device=x.device)
        ok = torch.isfinite(top) & (top > 0)
        y = ax.div_(torch.where(ok, top, torch.ones_like(top)))
        s2 = torch.linalg.vector_norm(y, 2).double().square()
        sq = torch.count_nonzero(y).double() if q == 0.0 else torch.linalg.vector_norm(y, q).double().pow(q)
        log_c = (1.0 - q / 2.0) * top.double().log() + 0.5 * (s2.log() - sq.log())
        fi = torch.finfo(cdt)
        c = log_c.clamp(math.log(fi.tiny), math.log(fi.max)).exp().to(cdt)
        return torch.where(ok & torch.isfinite(c), c, torch.ones_like(c))


def forward_math(
    x: torch.Tensor, mask: torch.Tensor, p: float, q: float, c: torch.Tensor | None = None
) -> torch.Tensor:
    """Sparseout output for a given keep mask and noise scale ``c`` (``None``: 1), no autograd, in ``x.dtype``."""
    cdt = compute_dtype(x.dtype)
    xc = x.to(cdt)
    out = torch.addcmul(xc, _signed_power(xc, q), _noise(mask, p, cdt, c))
    return _saturate(out, x.dtype)


def _power_term(x: torch.Tensor, q: float, gradient: str, c: torch.Tensor | None) -> torch.Tensor:
    """``min(coef * c * |x| ** expo, MAX_SCALE)`` of the gradient rule, in the compute dtype (a new tensor)."""
    cdt = compute_dtype(x.dtype)
    ax = x.to(cdt).abs()
    if gradient == "reference":
        coef, expo = 1.0, (q - 2.0) / 2.0
    else:
        coef, expo = q / 2.0, q / 2.0 - 1.0
    if coef == 0.0:  # exact rule at q = 0: d/dx (x + sign(x) * noise) = 1 (0 * inf would be nan at x = 0)
        return ax.zero_()
    scale = _abs_pow_(ax, expo)
    if c is not None:
        scale = scale.mul_(c * coef) if coef != 1.0 else scale.mul_(c)
    elif coef != 1.0:
        scale.mul_(coef)
    scale.clamp_(max=MAX_SCALE)  # after the coefficient (and c): q / 2 > 1 for q > 2 would break the bound
    return scale


def grad_factor(
    x: torch.Tensor, mask: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None = None
) -> torch.Tensor:
    """The backward multiplier ``1 + power * noise`` (in the compute dtype) for either gradient rule."""
    cdt = compute_dtype(x.dtype)
    return _power_term(x, q, gradient, c).mul_(_noise(mask, p, cdt)).add_(1.0)


def backward_math(
    grad: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None
) -> torch.Tensor:
    """Input gradient ``grad * factor = grad + (grad * power) * noise`` in ``grad``'s dtype, saturated."""
    cdt = compute_dtype(x.dtype)
    g = grad.to(cdt)
    term = _power_term(x, q, gradient, c).mul_(g)
    return _saturate(torch.addcmul(g, term, _noise(mask, p, cdt)), grad.dtype)


class _SparseoutFunction(torch.autograd.Function):
    """Autograd function for ``q != 2``, ``0 < p < 1``: saves the input, a bool mask and ``c`` (matched noise)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, p: float, q: float, gradient: str, inplace: bool, c: torch.Tensor | None
    ) -> torch.Tensor:
        mask = draw_mask(x, p)
        fwd, _ = _backend.cpu_math()
        out = fwd(x, mask, p, q, c)
        ctx.p, ctx.q, ctx.gradient = p, q, gradient
        extra = () if c is None else (c,)
        if inplace:
            ctx.save_for_backward(x.clone(), mask, *extra)
            x.copy_(out)
            ctx.mark_dirty(x)
            return x
        ctx.save_for_backward(x, mask, *extra)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, mask, *extra = ctx.saved_tensors
        _, bwd = _backend.cpu_math()
        grad_in = bwd(grad_out, x, mask, ctx.p, ctx.q, ctx.gradient, extra[0] if extra else None)
        return grad_in, None, None, None, None, None


def sparseout(
    input: torch.Tensor,
    p: float = 0.5,
    q: float = 2.0,
    training: bool = True,
    inplace: bool = False,
    gradient: str = "reference",
    noise: str = "raw",
) -> torch.Tensor:
    """Apply Sparseout to ``input``; see the module docstring for the formula and gradients.

    Args:
        input: a floating-point tensor of any shape.
        p: drop probability in ``[0, 1]``.
        q: the norm exponent, ``>= 0``; ``q < 2`` favours sparse activations, ``q > 2`` dense.
        training: identity when ``False`` (as in eval mode).
        inplace: write the result into ``input``.
        gradient: ``"reference"`` (the authors' backward) or ``"exact"`` (the true derivative).
        noise: ``"raw"`` (the paper's noise) or ``"matched"``: the noise of this call times
            ``c = sqrt(sum(x**2) / sum(|x|**q))`` (:func:`matched_scale`, a constant for autograd), so its
            total variance equals dropout's at the same ``p``. ``q = 2`` is dropout under both.

    Returns:
        A tensor of ``input``'s shape and dtype; ``input`` itself when ``training`` is
        ``False`` or ``p == 0``; zeros when ``p == 1``.

    Raises:
        ValueError: ``p``, ``q`` or ``gradient`` out of range.
        TypeError: ``input`` is not a floating-point tensor.

    Example:
        >>> import torch, hf_sparseout
        >>> y = hf_sparseout.sparseout(torch.randn(4, 8), p=0.1, q=1.5)
    """
    check_args(p, q, gradient, noise)
    if not isinstance(input, torch.Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(f"sparseout: input must be a floating-point tensor, got {got}")
    if not training or p == 0.0:
        return input
    if q == 2.0 or p == 1.0:
        out = F.dropout(input, p=float(p), training=True, inplace=inplace)
        if p < 1.0:
            with torch.no_grad():  # in place: identity on finite values; nothing saved for backward
                _saturate(out, out.dtype)
        return out
    c = matched_scale(input, float(q)) if noise == "matched" else None
    if _backend.use_triton(input):  # CUDA + triton (hf_sparseout.ops.backend): the fused kernel, else eager
        out = _backend.run_fused(input, float(p), float(q), gradient, inplace, c)
        if out is not None:
            return out
    return _SparseoutFunction.apply(input, float(p), float(q), gradient, inplace, c)
