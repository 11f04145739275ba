"""Fused Triton kernels for Sparseout: forward, backward and the keep mask.

Semantics are those of :mod:`hf_sparseout.ops.sparseout` (read its docstring): ``noise = m / (1 - p) - 1``,
``out = x + sign(x) * |x| ** (q / 2) * noise``, both gradient rules with the power term clamped at
``MAX_SCALE``, float32 compute for 16-bit inputs and saturation of every result to the dtype's finite range.

Random numbers. The keep mask is a pure function of ``(seed, ctr, element index)``: element ``e`` of a
flat tensor uses output ``e % 4`` of one Philox-4x32-10 call keyed by ``seed`` with counter
``(ctr_lo, ctr_hi, g_lo, g_hi)``, ``g = e // 4``: the four outputs of a call mask four consecutive elements,
so any tile of whole groups of four (the flash attention kernel's, on rows whose length is a multiple of 4) uses
every output it draws. This is curand's counter layout (``curand_init(seed, subsequence=g, offset=4 * ctr)``,
the scheme torch's own CUDA kernels use), so a ``ctr`` taken from torch's generator (and advanced past, see
:mod:`hf_sparseout.kernels.sparseout_op`) never reuses a counter of another kernel. The backward regenerates
the mask instead of reading a saved one.

Layout. One program handles ``4 * SUB`` consecutive elements: Philox call ``t`` of the program masks elements
``4 t .. 4 t + 3``; lane ``l`` of the block is the strided run ``4 t + l`` (the four runs together cover the
block, so each cache line is read and written whole). Indices are 64-bit (tensors over ``2 ** 31``
elements work). The kernels run under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors too.

This module imports ``triton``; the rest of the package does not.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SUB: int = 1024
"""Philox calls per program; one program covers ``4 * SUB`` elements. Not part of the mask's definition."""

N_ROUNDS: int = 10
"""Philox rounds (10, as curand's ``philox4_32_10`` and torch's kernels)."""

RAND_BITS: int = 24
"""A 32-bit draw keeps its top 24 bits: ``keep = (r >> 8) < thresh``, ``P(keep) = thresh / 2 ** 24``."""

NUM_WARPS: int = 4

_MAX_SCALE_DEFAULT = 1e4
_FINFO_MAX = {
    torch.float32: torch.finfo(torch.float32).max,
    torch.bfloat16: torch.finfo(torch.bfloat16).max,
    torch.float16: torch.finfo(torch.float16).max,
}
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(_FINFO_MAX)

# Power of |x| selectors (constexpr): exponent 0, 1/2, 1, 2, any other.
_POW_ZERO, _POW_SQRT, _POW_ONE, _POW_TWO, _POW_ANY = 0, 1, 2, 3, 4


def _pow_kind(e: float) -> int:
    return {0.0: _POW_ZERO, 0.5: _POW_SQRT, 1.0: _POW_ONE, 2.0: _POW_TWO}.get(float(e), _POW_ANY)


@triton.jit
def _philox4x32(k0, k1, c0, c1, c2, c3, N_ROUNDS: tl.constexpr):
    """Philox-4x32 (Salmon et al., 2011) rounds; each 32x32->64 product is one wide multiply."""
    for _ in tl.static_range(N_ROUNDS):
        p0 = c0.to(tl.uint64) * 0xD2511F53
        p1 = c2.to(tl.uint64) * 0xCD9E8D57
        c0 = (p1 >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (p0 >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = p1.to(tl.uint32)
        c3 = p0.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _rand4(seed, ctr_lo, ctr_hi, pid, SUB: tl.constexpr, N_ROUNDS: tl.constexpr):
    """Four uint32 random vectors of length SUB for program ``pid`` (one Philox call per lane).

    Lane ``t`` uses counter ``(ctr_lo, ctr_hi, g_lo, g_hi)`` with ``g = pid * SUB + t``; SUB divides 2**32,
    so ``g_lo = (pid * SUB) mod 2**32 + t`` never carries into ``g_hi``.
    """
    s = seed.to(tl.uint64)
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = (s >> 32).to(tl.uint32)
    g0 = pid * SUB
    zero = tl.zeros([SUB], dtype=tl.uint32)
    g_lo = zero + (g0 & 0xFFFFFFFF).to(tl.uint32) + tl.arange(0, SUB).to(tl.uint32)
    g_hi = zero + (g0 >> 32).to(tl.uint32)
    c0 = (zero + ctr_lo).to(tl.uint32)
    c1 = (zero + ctr_hi).to(tl.uint32)
    return _philox4x32(k0, k1, c0, c1, g_lo, g_hi, N_ROUNDS)


@triton.jit
def _noise(r, thresh, noise_keep, noise_drop):
    """``c * (m / (1 - p) - 1)`` from a uint32 draw: ``noise_keep`` where kept, ``noise_drop`` (-c) where dropped."""
    keep = (r >> 8).to(tl.int32) < thresh
    return tl.where(keep, noise_keep, noise_drop)


@triton.jit
def _load_c(c_ptr, HAS_C: tl.constexpr):
    """The matched-noise scale ``c`` (a 0-d float32 tensor, read on the device: no host sync), or 1."""
    if HAS_C:
        return tl.load(c_ptr).to(tl.float32)
    else:
        return 1.0


@triton.jit
def _abs_pow(a, e, KIND: tl.constexpr):
    """``a ** e`` for ``a = |x| >= 0`` (or NaN), with torch.pow's values at 0 and inf."""
    if KIND == 0:
        return tl.full(a.shape, 1.0, tl.float32)
    elif KIND == 1:
        return tl.sqrt(a)
    elif KIND == 2:
        return a
    elif KIND == 3:
        return a * a
    else:
        return tl.exp2(e * tl.log2(a))


@triton.jit
def _saturate(v, fmax):
    """Clamp to the output dtype's finite range; NaN stays NaN (as torch.clamp)."""
    v = tl.maximum(v, -fmax, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(v, fmax, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _ld(ptr, offs, rem, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr + offs, mask=offs < rem, other=0.0)
    else:
        return tl.load(ptr + offs)


@triton.jit
def _st(ptr, offs, val, rem, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=offs < rem)
    else:
        tl.store(ptr + offs, val.to(ptr.dtype.element_ty))


@triton.jit
def _fwd_one(x, r, thresh, noise_keep, noise_drop, half_q, fmax, KIND: tl.constexpr):
    xf = x.to(tl.float32)
    mag = _abs_pow(tl.abs(xf), half_q, KIND)
    # copysign(mag, x): the sign bit of x on |x| ** (q/2) (so -0.0 keeps its sign, as torch.copysign).
    sgn = xf.to(tl.uint32, bitcast=True) & 0x80000000
    signed = (mag.to(tl.uint32, bitcast=True) | sgn).to(tl.float32, bitcast=True)
    if KIND == 0:  # q = 0: |x| ** 0 = 1, but sign(0) = 0, so a zero input stays zero (as the eager op)
        signed = tl.where(xf == 0.0, 0.0, signed)
    return _saturate(xf + signed * _noise(r, thresh, noise_keep, noise_drop), fmax)


@triton.jit
def _fwd_block(
    xb,
    ob,
    rem,
    r0,
    r1,
    r2,
    r3,
    thresh,
    noise_keep,
    noise_drop,
    half_q,
    fmax,
    KIND: tl.constexpr,
    SUB: tl.constexpr,
    MASKED: tl.constexpr,
):
    t = 4 * tl.arange(0, SUB)  # element 4 t + l takes output l of Philox call t
    x0 = _ld(xb, t, rem, MASKED)
    x1 = _ld(xb, t + 1, rem, MASKED)
    x2 = _ld(xb, t + 2, rem, MASKED)
    x3 = _ld(xb, t + 3, rem, MASKED)
    _st(ob, t, _fwd_one(x0, r0, thresh, noise_keep, noise_drop, half_q, fmax, KIND), rem, MASKED)
    _st(ob, t + 1, _fwd_one(x1, r1, thresh, noise_keep, noise_drop, half_q, fmax, KIND), rem, MASKED)
    _st(ob, t + 2, _fwd_one(x2, r2, thresh, noise_keep, noise_drop, half_q, fmax, KIND), rem, MASKED)
    _st(ob, t + 3, _fwd_one(x3, r3, thresh, noise_keep, noise_drop, half_q, fmax, KIND), rem, MASKED)


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh"])
def _sparseout_fwd_kernel(
    x_ptr,
    out_ptr,
    n,
    seed,
    ctr_lo,
    ctr_hi,
    thresh,
    noise_keep,
    half_q,
    fmax,
    c_ptr,
    HAS_C: tl.constexpr,
    KIND: tl.constexpr,
    SUB: tl.constexpr,
    N_ROUNDS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r0, r1, r2, r3 = _rand4(seed, ctr_lo, ctr_hi, pid, SUB, N_ROUNDS)
    base = pid * (4 * SUB)  # 64-bit element offset of this program, applied once to the pointers
    rem = n - base
    xb = x_ptr + base
    ob = out_ptr + base
    cs = _load_c(c_ptr, HAS_C)
    nk = noise_keep * cs
    nd = -1.0 * cs
    if rem >= 4 * SUB:
        _fwd_block(xb, ob, 4 * SUB, r0, r1, r2, r3, thresh, nk, nd, half_q, fmax, KIND, SUB, False)
    else:
        rem32 = rem.to(tl.int32)
        _fwd_block(xb, ob, rem32, r0, r1, r2, r3, thresh, nk, nd, half_q, fmax, KIND, SUB, True)


@triton.jit
def _bwd_one(g, x, r, thresh, noise_keep, coef, expo, max_scale, fmax, KIND: tl.constexpr):
    scale = _abs_pow(tl.abs(x.to(tl.float32)), expo, KIND)
    # clamp after the coefficient (q / 2 > 1 for q > 2), as the eager op: |factor| <= 1 + max_scale * |noise|
    scale = tl.minimum(scale * coef, max_scale, propagate_nan=tl.PropagateNan.ALL)
    factor = scale * _noise(r, thresh, noise_keep, -1.0) + 1.0
    return _saturate(factor * g.to(tl.float32), fmax)


@triton.jit
def _bwd_block(
    gb,
    xb,
    ib,
    rem,
    r0,
    r1,
    r2,
    r3,
    thresh,
    noise_keep,
    coef,
    expo,
    max_scale,
    fmax,
    KIND: tl.constexpr,
    SUB: tl.constexpr,
    MASKED: tl.constexpr,
):
    t = 4 * tl.arange(0, SUB)  # as _fwd_block
    x0 = _ld(xb, t, rem, MASKED)
    x1 = _ld(xb, t + 1, rem, MASKED)
    x2 = _ld(xb, t + 2, rem, MASKED)
    x3 = _ld(xb, t + 3, rem, MASKED)
    g0 = _ld(gb, t, rem, MASKED)
    g1 = _ld(gb, t + 1, rem, MASKED)
    g2 = _ld(gb, t + 2, rem, MASKED)
    g3 = _ld(gb, t + 3, rem, MASKED)
    _st(ib, t, _bwd_one(g0, x0, r0, thresh, noise_keep, coef, expo, max_scale, fmax, KIND), rem, MASKED)
    _st(ib, t + 1, _bwd_one(g1, x1, r1, thresh, noise_keep, coef, expo, max_scale, fmax, KIND), rem, MASKED)
    _st(ib, t + 2, _bwd_one(g2, x2, r2, thresh, noise_keep, coef, expo, max_scale, fmax, KIND), rem, MASKED)
    _st(ib, t + 3, _bwd_one(g3, x3, r3, thresh, noise_keep, coef, expo, max_scale, fmax, KIND), rem, MASKED)


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh"])
def _sparseout_bwd_kernel(
    g_ptr,
    x_ptr,
    gi_ptr,
    n,
    seed,
    ctr_lo,
    ctr_hi,
    thresh,
    noise_keep,
    coef,
    expo,
    max_scale,
    fmax,
    c_ptr,
    HAS_C: tl.constexpr,
    KIND: tl.constexpr,
    SUB: tl.constexpr,
    N_ROUNDS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r0, r1, r2, r3 = _rand4(seed, ctr_lo, ctr_hi, pid, SUB, N_ROUNDS)
    coef = coef * _load_c(c_ptr, HAS_C)  # c scales the power term; the clamp comes after it
    base = pid * (4 * SUB)
    rem = n - base
    gb = g_ptr + base
    xb = x_ptr + base
    ib = gi_ptr + base
    if rem >= 4 * SUB:
        _bwd_block(
            gb, xb, ib, 4 * SUB, r0, r1, r2, r3, thresh, noise_keep, coef, expo, max_scale, fmax, KIND, SUB, False
        )
    else:
        rem32 = rem.to(tl.int32)
        _bwd_block(gb, xb, ib, rem32, r0, r1, r2, r3, thresh, noise_keep, coef, expo, max_scale, fmax, KIND, SUB, True)


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh", "start"])
def _keep_mask_kernel(m_ptr, n, start, seed, ctr_lo, ctr_hi, thresh, SUB: tl.constexpr, N_ROUNDS: tl.constexpr):
    start = start.to(tl.int64)  # start + n may pass 2**31 while start alone fits in int32
    pid = tl.program_id(0).to(tl.int64) + start // (4 * SUB)
    r0, r1, r2, r3 = _rand4(seed, ctr_lo, ctr_hi, pid, SUB, N_ROUNDS)
    o0 = pid * (4 * SUB) + 4 * tl.arange(0, SUB)
    k0 = ((r0 >> 8).to(tl.int32) < thresh).to(tl.int8)
    k1 = ((r1 >> 8).to(tl.int32) < thresh).to(tl.int8)
    k2 = ((r2 >> 8).to(tl.int32) < thresh).to(tl.int8)
    k3 = ((r3 >> 8).to(tl.int32) < thresh).to(tl.int8)
    end = start + n
    o1 = o0 + 1
    o2 = o0 + 2
    o3 = o0 + 3
    tl.store(m_ptr + (o0 - start), k0, mask=(o0 >= start) & (o0 < end))
    tl.store(m_ptr + (o1 - start), k1, mask=(o1 >= start) & (o1 < end))
    tl.store(m_ptr + (o2 - start), k2, mask=(o2 >= start) & (o2 < end))
    tl.store(m_ptr + (o3 - start), k3, mask=(o3 >= start) & (o3 < end))


# ----------------------------------------------------------------------------------------------------------------
# Launchers (plain Python; no autograd). ``seed`` is in [0, 2**64), ``ctr`` in [0, 2**64).
# ----------------------------------------------------------------------------------------------------------------


def _threshold(p: float) -> int:
    """``thresh`` with ``P(keep) = thresh / 2**24`` closest to ``1 - p`` (exact for p = 0 and p = 1)."""
    return round((1.0 - float(p)) * (1 << RAND_BITS))


def _rng_args(seed: int, ctr: int) -> tuple[int, int, int]:
    if not (0 <= seed < 1 << 64 and 0 <= ctr < 1 << 64):
        raise ValueError(f"seed and ctr must be in [0, 2**64), got seed={seed}, ctr={ctr}")
    return int(seed), int(ctr & 0xFFFFFFFF), int(ctr >> 32)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, 4 * SUB),)


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"sparseout triton kernel: dtype must be one of {SUPPORTED_DTYPES}, got {x.dtype}")
    return x.contiguous()


def _c_args(c: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(c_ptr, HAS_C)``: ``c`` as a 1-element float32 tensor on ``x``'s device, or ``x`` as an unused pointer."""
    if c is None:
        return x, False
    return c.detach().reshape(1).to(device=x.device, dtype=torch.float32), True


def sparseout_fwd(
    x: torch.Tensor,
    p: float,
    q: float,
    seed: int,
    ctr: int,
    out: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparseout forward for the mask ``(seed, ctr)``; returns a contiguous tensor shaped like ``x``.

    ``0 < p < 1`` is expected (the op routes ``p`` in {0, 1} elsewhere); ``out`` may be given (contiguous,
    same shape and dtype) and is then written and returned. ``c`` (a 0-d tensor, read on the device) scales
    the noise (``noise="matched"``); ``None`` is 1.
    """
    xc = _check_input(x)
    if out is None:
        out = torch.empty_like(xc, memory_format=torch.contiguous_format)
    n = xc.numel()
    if n == 0:
        return out
    s, lo, hi = _rng_args(seed, ctr)
    half_q = float(q) / 2.0
    c_ptr, has_c = _c_args(c, xc)
    _sparseout_fwd_kernel[_grid(n)](
        xc,
        out,
        n,
        s,
        lo,
        hi,
        _threshold(p),
        1.0 / (1.0 - float(p)) - 1.0,
        half_q,
        _FINFO_MAX[xc.dtype],
        c_ptr,
        HAS_C=has_c,
        KIND=_pow_kind(half_q),
        SUB=SUB,
        N_ROUNDS=N_ROUNDS,
        num_warps=NUM_WARPS,
    )
    return out


def sparseout_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    p: float,
    q: float,
    gradient: str,
    seed: int,
    ctr: int,
    max_scale: float = _MAX_SCALE_DEFAULT,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input gradient (``grad``'s dtype) for the mask ``(seed, ctr)`` and rule ``"reference"`` or ``"exact"``.

    ``c`` (matched noise) multiplies the power term before the ``max_scale`` clamp, a constant as in the eager op.
    """
    xc = _check_input(x)
    gc = _check_input(grad)
    if gc.shape != xc.shape:
        raise ValueError(f"grad shape {tuple(gc.shape)} != input shape {tuple(xc.shape)}")
    gi = torch.empty_like(gc, memory_format=torch.contiguous_format)
    n = xc.numel()
    if n == 0:
        return gi
    if gradient == "reference":
        coef, expo = 1.0, (float(q) - 2.0) / 2.0
    elif gradient == "exact":
        coef, expo = float(q) / 2.0, float(q) / 2.0 - 1.0
        if coef == 0.0:  # q = 0: the derivative is 1 (avoid 0 * inf = nan at x = 0)
            expo = 0.0
    else:
        raise ValueError(f"gradient must be 'reference' or 'exact', got {gradient!r}")
    s, lo, hi = _rng_args(seed, ctr)
    c_ptr, has_c = _c_args(c, xc)
    _sparseout_bwd_kernel[_grid(n)](
        gc,
        xc,
        gi,
        n,
        s,
        lo,
        hi,
        _threshold(p),
        1.0 / (1.0 - float(p)) - 1.0,
        coef,
        expo,
        float(max_scale),
        _FINFO_MAX[gc.dtype],
        c_ptr,
        HAS_C=has_c,
        KIND=_pow_kind(expo),
        SUB=SUB,
        N_ROUNDS=N_ROUNDS,
        num_warps=NUM_WARPS,
    )
    return gi


def keep_mask(
    numel: int, p: float, seed: int, ctr: int, device: torch.device | str = "cuda", start: int = 0
) -> torch.Tensor:
    """The keep mask (bool) of elements ``[start, start + numel)`` of the stream ``(seed, ctr)``.

    The same mask :func:`sparseout_fwd` and :func:`sparseout_bwd` use; for tests and debugging.
    """
    m = torch.empty(numel, dtype=torch.int8, device=device)
    if numel == 0:
        return m.bool()
    s, lo, hi = _rng_args(seed, ctr)
    first = start // (4 * SUB)
    last = (start + numel - 1) // (4 * SUB)
    _keep_mask_kernel[(last - first + 1,)](
        m, numel, start, s, lo, hi, _threshold(p), SUB=SUB, N_ROUNDS=N_ROUNDS, num_warps=NUM_WARPS
    )
    return m.bool()
