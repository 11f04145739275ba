"""Flash-style Triton kernels for Sparseout on attention probabilities (forward and backward).

With ``P = softmax(S)``, ``S = scale * Q K^T + bias`` (causal / boolean / additive masks), Sparseout on the
probabilities gives ``O = (P + P ** h * N) V`` with ``h = q / 2`` and ``N = m / (1 - p) - 1`` (``sign(P) = 1``
where ``P > 0``; masked entries have ``P = 0`` and no noise). Since ``P ** h = exp(h (S - m)) / l ** h`` for the
row max ``m`` and ``l = sum exp(S - m)``, the forward streams over key blocks with two accumulators,
``A1 = sum exp(S - m) V`` and ``A2 = sum exp(h (S - m)) N V``, rescaled by ``exp(m_old - m)`` and
``exp(h (m_old - m))`` when the running max changes, and ends with ``O = A1 / l + A2 / l ** h``: the N x N
matrix is never stored. It saves the log-sum-exp per row (and, for the exact gradient rule, ``O1 = A1 / l``).

Backward (``P`` recomputed from the log-sum-exp, ``N`` regenerated): with ``Pt = P + P ** h N``,
``dV = Pt^T dO``, ``dPt = dO V^T``, ``dP = dPt * (1 + min(c P ** (h - 1), MAX_SCALE) N)`` (``c = 1`` for the
reference rule, ``h`` for the exact one: the eager op's factor), ``dS = P (dP - D)`` with the row term
``D = sum_j P dP``, which is ``rowsum(dO * O)`` for the reference rule (``P * factor = Pt``) and
``rowsum(dO * (O1 + h (O - O1)))`` for the exact one (up to the clamp, active only where ``P ** (h - 1)``
exceeds 1e4). One kernel per key block accumulates dK and dV (looping over the query heads of a GQA group, so
no atomics), one per query block accumulates dQ.

Random numbers. The keep mask of probability ``(b, h, i, j)`` is element ``e = ((b H + h) M + i) N + j`` of
the stream of :mod:`hf_sparseout.kernels.sparseout_triton` (``keep_mask(B*H*M*N, p, seed, ctr)``), i.e. the mask
the element-wise kernel would draw on the contiguous ``(B, H, M, N)`` probability tensor with the same
``(seed, ctr)``, whatever the block sizes. In that stream the four outputs of one Philox call mask four
consecutive elements, so when ``N`` is a multiple of 4 a tile makes one call per four columns and uses all four
outputs (``ALIGNED``); otherwise each element runs its own call and keeps one output (four times the work).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from hf_sparseout.kernels.sparseout_triton import N_ROUNDS, _philox4x32, _rng_args, _threshold

MASK_NONE, MASK_ADD, MASK_BOOL = 0, 1, 2
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


@triton.jit
def _philox_at(g, seed, ctr_lo, ctr_hi, N_ROUNDS: tl.constexpr):
    """The four outputs of the Philox calls with counters ``(ctr_lo, ctr_hi, g_lo, g_hi)`` (``g`` int64)."""
    s = seed.to(tl.uint64)
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = (s >> 32).to(tl.uint32)
    g_lo = (g & 0xFFFFFFFF).to(tl.uint32)
    g_hi = (g >> 32).to(tl.uint32)
    zero = g_lo * 0
    return _philox4x32(k0, k1, zero + ctr_lo.to(tl.uint32), zero + ctr_hi.to(tl.uint32), g_lo, g_hi, N_ROUNDS)


@triton.jit
def _keep(row_base, cols, seed, ctr_lo, ctr_hi, thresh, ALIGNED: tl.constexpr, N_ROUNDS: tl.constexpr):
    """Keep mask of the tile ``row_base[:, None] + cols[None, :]`` (flat int64 indices): the element-wise stream.

    Element ``e`` takes output ``e % 4`` of the Philox call ``e // 4``. ``ALIGNED`` (rows of a multiple of 4 and
    ``cols`` a run starting at a multiple of 4): one call per four columns, all four outputs used. Otherwise one
    call per element, keeping one output (four times the work).
    """
    if ALIGNED:
        bm: tl.constexpr = row_base.shape[0]
        bn: tl.constexpr = cols.shape[0]
        g = (row_base[:, None] + tl.min(cols, 0)) // 4 + tl.arange(0, bn // 4)[None, :]
        c0, c1, c2, c3 = _philox_at(g, seed, ctr_lo, ctr_hi, N_ROUNDS)
        r = tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), [bm, bn])  # [.., 2i + j] = c_(2i + j)
    else:
        e = row_base[:, None] + cols[None, :]
        c0, c1, c2, c3 = _philox_at(e // 4, seed, ctr_lo, ctr_hi, N_ROUNDS)
        lane = e % 4
        r = tl.where(lane == 0, c0, tl.where(lane == 1, c1, tl.where(lane == 2, c2, c3)))
    return (r >> 8).to(tl.int32) < thresh


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """``a @ b`` accumulated in float32; IEEE (no TF32) for float32 operands; 0: native, 1: IEEE, 2: upcast first.

    Mode 2 is for bfloat16 under Triton's interpreter, whose dot mishandles bfloat16 operands (products of
    bfloat16 values are exact in float32, so the result is the GPU's up to summation order).
    """
    if IEEE == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE == 1:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _scores(
    q,
    k,
    rows,
    cols,
    b,
    h,
    M,
    N,
    scale,
    mask_ptr,
    smb,
    smh,
    smm,
    smn,
    CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``scale * q k^T`` with every mask applied (``-inf`` where masked or out of range), float32."""
    s = _dot(q, tl.trans(k), IEEE) * scale
    valid = (rows[:, None] < M) & (cols[None, :] < N)
    if CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None])
    if MASK_KIND != 0:
        mp = mask_ptr + b * smb + h * smh + rows[:, None].to(tl.int64) * smm + cols[None, :].to(tl.int64) * smn
        inb = (rows[:, None] < M) & (cols[None, :] < N)
        if MASK_KIND == 1:
            s = s + tl.load(mp, mask=inb, other=0.0).to(tl.float32)
        else:
            valid = valid & (tl.load(mp, mask=inb, other=0) != 0)
    return tl.where(valid, s, float("-inf"))


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh"])
def _attn_fwd_kernel(
    Q,
    K,
    V,
    MASKP,
    OUT,
    O1,
    LSE,
    sqb,
    sqh,
    sqm,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    smb,
    smh,
    smm,
    smn,
    H,
    GROUP,
    M,
    N,
    D,
    scale,
    seed,
    ctr_lo,
    ctr_hi,
    thresh,
    noise_keep,
    half_q,
    CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    STORE_O1: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGNED: tl.constexpr,
    N_ROUNDS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    qmask = (rows[:, None] < M) & (dims[None, :] < D)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None].to(tl.int64) * sqm + dims[None, :], mask=qmask, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = N
    if CAUSAL:
        hi = tl.minimum(N, (pid_m + 1) * BLOCK_M)
    row_base = (bh * M + rows.to(tl.int64)) * N
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kvmask = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + b * skb + hk * skh + cols[:, None].to(tl.int64) * skn + dims[None, :], mask=kvmask, other=0.0)
        v = tl.load(V + b * svb + hk * svh + cols[:, None].to(tl.int64) * svn + dims[None, :], mask=kvmask, other=0.0)
        s = _scores(q, k, rows, cols, b, h, M, N, scale, MASKP, smb, smh, smm, smn, CAUSAL, MASK_KIND, IEEE)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        alpha_h = tl.exp(half_q * (m_i - m_safe))
        d = s - m_safe[:, None]
        e1 = tl.exp(d)
        eh = tl.exp(half_q * d)
        keep = _keep(row_base, cols, seed, ctr_lo, ctr_hi, thresh, ALIGNED, N_ROUNDS)
        e2 = eh * tl.where(keep, noise_keep, -1.0)
        l_i = l_i * alpha + tl.sum(e1, 1)
        acc1 = acc1 * alpha[:, None] + _dot(e1.to(v.dtype), v, IEEE)
        acc2 = acc2 * alpha_h[:, None] + _dot(e2.to(v.dtype), v, IEEE)
        m_i = m_new
    empty = l_i == 0.0  # every key masked: output 0 (the explicit path's nan_to_num), P = 0 in backward
    l_safe = tl.where(empty, 1.0, l_i)
    o1 = acc1 / l_safe[:, None]
    out = o1 + acc2 * tl.exp(-half_q * tl.log(l_safe))[:, None]
    m_fin = tl.where(m_i == float("-inf"), 0.0, m_i)
    lse = tl.where(empty, float("inf"), m_fin + tl.log(l_safe))
    optr = rows[:, None].to(tl.int64) * D + dims[None, :]
    obase = bh * M * D
    tl.store(OUT + obase + optr, out.to(OUT.dtype.element_ty), mask=qmask)
    if STORE_O1:
        tl.store(O1 + obase + optr, o1.to(O1.dtype.element_ty), mask=qmask)
    tl.store(LSE + bh * M + rows, lse, mask=rows < M)


@triton.jit
def _probs_grad(
    s, lse, do, v, delta, rows, cols, bh, M, N, seed, ctr_lo, ctr_hi, thresh, noise_keep, half_q, coef, max_scale,
    Q2: tl.constexpr, IEEE: tl.constexpr, ALIGNED: tl.constexpr, N_ROUNDS: tl.constexpr,
):  # fmt: skip
    """``(Pt, dS)`` of one tile: the Sparseout'd probabilities and the score gradient (float32)."""
    d = s - lse[:, None]  # -inf where masked; lse = +inf on empty rows
    p = tl.exp(d)
    keep = _keep((bh * M + rows.to(tl.int64)) * N, cols, seed, ctr_lo, ctr_hi, thresh, ALIGNED, N_ROUNDS)
    nz = tl.where(keep, noise_keep, -1.0)
    if Q2:
        pt = p + p * nz
        pw = tl.full(p.shape, 1.0, tl.float32)
    else:
        pt = p + tl.exp(half_q * d) * nz
        pw = tl.exp((half_q - 1.0) * d)  # P ** (h - 1): inf for P = 0 and h < 1, clamped below
    fac = 1.0 + tl.minimum(coef * pw, max_scale) * nz
    dpt = _dot(do, tl.trans(v), IEEE)
    ds = p * (dpt * fac - delta[:, None])
    return pt, ds


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh"])
def _attn_bwd_dkdv_kernel(
    Q, K, V, MASKP, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb, smh, smm, smn,
    H, HKV, GROUP, M, N, D, scale, seed, ctr_lo, ctr_hi, thresh, noise_keep, half_q, coef, max_scale,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, Q2: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ALIGNED: tl.constexpr, N_ROUNDS: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1).to(tl.int64)
    b = bhk // HKV
    hk = bhk % HKV
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    kvmask = (cols[:, None] < N) & (dims[None, :] < D)
    k = tl.load(K + b * skb + hk * skh + cols[:, None].to(tl.int64) * skn + dims[None, :], mask=kvmask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + cols[:, None].to(tl.int64) * svn + dims[None, :], mask=kvmask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H + h
        for start in range(lo, M, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            qmask = (rows[:, None] < M) & (dims[None, :] < D)
            roff = rows[:, None].to(tl.int64)
            q = tl.load(Q + b * sqb + h * sqh + roff * sqm + dims[None, :], mask=qmask, other=0.0)
            do = tl.load(DO + bh * M * D + roff * D + dims[None, :], mask=qmask, other=0.0)
            lse = tl.load(LSE + bh * M + rows, mask=rows < M, other=float("inf"))
            delta = tl.load(DELTA + bh * M + rows, mask=rows < M, other=0.0)
            s = _scores(q, k, rows, cols, b, h, M, N, scale, MASKP, smb, smh, smm, smn, CAUSAL, MASK_KIND, IEEE)
            pt, ds = _probs_grad(
                s, lse, do, v, delta, rows, cols, bh, M, N, seed, ctr_lo, ctr_hi, thresh, noise_keep, half_q, coef,
                max_scale, Q2, IEEE, ALIGNED, N_ROUNDS,
            )  # fmt: skip
            dv += _dot(tl.trans(pt.to(do.dtype)), do, IEEE)
            dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    optr = bhk * N * D + cols[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(DK + optr, (dk * scale).to(DK.dtype.element_ty), mask=kvmask)
    tl.store(DV + optr, dv.to(DV.dtype.element_ty), mask=kvmask)


@triton.jit(do_not_specialize=["seed", "ctr_lo", "ctr_hi", "thresh"])
def _attn_bwd_dq_kernel(
    Q, K, V, MASKP, DO, LSE, DELTA, DQ,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, smb, smh, smm, smn,
    H, GROUP, M, N, D, scale, seed, ctr_lo, ctr_hi, thresh, noise_keep, half_q, coef, max_scale,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, Q2: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ALIGNED: tl.constexpr, N_ROUNDS: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    qmask = (rows[:, None] < M) & (dims[None, :] < D)
    roff = rows[:, None].to(tl.int64)
    q = tl.load(Q + b * sqb + h * sqh + roff * sqm + dims[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + bh * M * D + roff * D + dims[None, :], mask=qmask, other=0.0)
    lse = tl.load(LSE + bh * M + rows, mask=rows < M, other=float("inf"))
    delta = tl.load(DELTA + bh * M + rows, mask=rows < M, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = N
    if CAUSAL:
        hi = tl.minimum(N, (pid_m + 1) * BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        kvmask = (cols[:, None] < N) & (dims[None, :] < D)
        k = tl.load(K + b * skb + hk * skh + cols[:, None].to(tl.int64) * skn + dims[None, :], mask=kvmask, other=0.0)
        v = tl.load(V + b * svb + hk * svh + cols[:, None].to(tl.int64) * svn + dims[None, :], mask=kvmask, other=0.0)
        s = _scores(q, k, rows, cols, b, h, M, N, scale, MASKP, smb, smh, smm, smn, CAUSAL, MASK_KIND, IEEE)
        _, ds = _probs_grad(
            s, lse, do, v, delta, rows, cols, bh, M, N, seed, ctr_lo, ctr_hi, thresh, noise_keep, half_q, coef,
            max_scale, Q2, IEEE, ALIGNED, N_ROUNDS,
        )  # fmt: skip
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(DQ + bh * M * D + roff * D + dims[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qmask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers (no autograd): q, k, v of shape (B, H, M, D) / (B, HKV, N, D), last dimension contiguous.
# ----------------------------------------------------------------------------------------------------------------


def _dot_mode(x: torch.Tensor) -> int:
    """``_dot``'s mode: IEEE for float32 (as SDPA's math, not TF32), upcast for bfloat16 in the interpreter."""
    if x.dtype == torch.float32:
        return 1
    return 2 if x.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1" else 0


def _blocks(device: torch.device) -> tuple[int, int]:
    """``(BLOCK_M, BLOCK_N)`` without autotuning: 64 x 64 on a GPU; 16 x 16 in the interpreter, where size is time."""
    return (64, 64) if device.type == "cuda" else (16, 16)


# Autotuning (GPU only; the interpreter and explicit ``blocks`` launch the plain kernels). The mask is a function
# of the element index alone, so every configuration computes the same result up to summation order. Configurations
# that do not fit the device (shared memory, registers) are skipped by the autotuner. Kernels write (never
# accumulate into) their outputs, so benchmarking a configuration leaves nothing to reset.
TUNE_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 64, 4, 2),
    (128, 64, 8, 2),
    (64, 32, 4, 3),
    (128, 32, 4, 2),
)
"""``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` tried per kernel and shape (each is a compile on first use: few)."""


def tune_configs() -> list[triton.Config]:
    """The autotuner's configurations (:data:`TUNE_SHAPES`)."""
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in TUNE_SHAPES]


_KEY = ["M", "N", "D", "GROUP", "CAUSAL", "MASK_KIND", "IEEE"]
_attn_fwd_tuned = triton.autotune(tune_configs(), key=[*_KEY, "STORE_O1"])(_attn_fwd_kernel)
_attn_bwd_dkdv_tuned = triton.autotune(tune_configs(), key=[*_KEY, "Q2"])(_attn_bwd_dkdv_kernel)
_attn_bwd_dq_tuned = triton.autotune(tune_configs(), key=[*_KEY, "Q2"])(_attn_bwd_dq_kernel)


def autotuned(device: torch.device, blocks: tuple[int, int] | None) -> bool:
    """Whether launches autotune: CUDA tensors, not the interpreter, no explicit ``blocks``."""
    return blocks is None and device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"


def _launch(plain, tuned, grid_of, blocks: tuple[int, int] | None, device: torch.device, *args, **flags) -> None:
    """Launch ``tuned`` (autotuned block sizes) or ``plain`` with ``blocks`` (default :func:`_blocks`)."""
    if autotuned(device, blocks):
        tuned[lambda meta: grid_of(meta["BLOCK_M"], meta["BLOCK_N"])](*args, **flags)
    else:
        bm, bn = blocks or _blocks(device)
        plain[grid_of(bm, bn)](*args, BLOCK_M=bm, BLOCK_N=bn, **flags)


def _mask_args(mask: torch.Tensor | None, b: int, h: int, m: int, n: int, dummy: torch.Tensor) -> tuple:
    """``(ptr, MASK_KIND, strides)`` for ``None``, a boolean or an additive float mask broadcastable to (B,H,M,N)."""
    if mask is None:
        return dummy, MASK_NONE, (0, 0, 0, 0)
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = mask.expand(b, h, m, n)  # broadcast dimensions get stride 0: nothing is materialised
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), MASK_BOOL, tuple(mask.stride())
    return mask, MASK_ADD, tuple(mask.stride())


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("flash Sparseout attention takes 4-D (batch, heads, seq, head_dim) query, key and value")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"flash Sparseout attention: dtypes must match and be one of {SUPPORTED_DTYPES}")
    if q.size(1) % k.size(1) or k.shape != v.shape or q.size(-1) != k.size(-1):
        raise ValueError(f"flash Sparseout attention: incompatible shapes {q.shape}, {k.shape}, {v.shape}")
    if not MIN_HEAD_DIM <= q.size(-1) <= MAX_HEAD_DIM:
        raise ValueError(f"flash Sparseout attention: head_dim must be in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")


def _common(q, k, v, p, half_q, seed, ctr):
    s, lo, hi = _rng_args(seed, ctr)
    return s, lo, hi, _threshold(p), 1.0 / (1.0 - float(p)) - 1.0, float(half_q)


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    p: float,
    sq: float,
    seed: int,
    ctr: int,
    store_o1: bool = False,
    blocks: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(O, lse, O1)``: Sparseout(p, q=sq) attention for the mask ``(seed, ctr)``; ``O1 = softmax V`` if asked.

    ``blocks = (BLOCK_M, BLOCK_N)`` fixes the block sizes (tests); by default a GPU autotunes them.
    """
    _check(q, k, v)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, H, M, D = q.shape
    HKV, N = k.size(1), k.size(2)
    out = torch.empty((B, H, M, D), dtype=q.dtype, device=q.device)
    o1 = torch.empty_like(out) if store_o1 else out
    lse = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
    mptr, kind, ms = _mask_args(mask, B, H, M, N, q)
    s, lo, hi, thresh, nk, hq = _common(q, k, v, p, sq / 2.0, seed, ctr)
    bd = max(16, triton.next_power_of_2(D))
    _launch(
        _attn_fwd_kernel, _attn_fwd_tuned, lambda bm, bn: (triton.cdiv(M, bm), B * H), blocks, q.device,
        q, k, v, mptr, out, o1, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1),
        v.stride(2), *ms, H, H // HKV, M, N, D, float(scale), s, lo, hi, thresh, nk, hq,
        CAUSAL=bool(causal), MASK_KIND=kind, STORE_O1=bool(store_o1), IEEE=_dot_mode(q),
        BLOCK_D=bd, ALIGNED=N % 4 == 0, N_ROUNDS=N_ROUNDS,
    )  # fmt: skip
    return out, lse, (o1 if store_o1 else None)


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    p: float,
    sq: float,
    gradient: str,
    seed: int,
    ctr: int,
    out: torch.Tensor,
    lse: torch.Tensor,
    o1: torch.Tensor | None,
    max_scale: float,
    blocks: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dQ, dK, dV)`` for the forward of :func:`attention_fwd` with the same arguments (``blocks``: as there)."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, H, M, D = q.shape
    HKV, N = k.size(1), k.size(2)
    do = do.contiguous()
    half_q = sq / 2.0
    if gradient == "reference":
        coef, o_eff = 1.0, out
    else:
        coef = half_q
        o_eff = out if sq == 2.0 else o1.float() + half_q * (out.float() - o1.float())
    delta = (do.float() * o_eff.float()).sum(-1).contiguous()
    dq = torch.empty((B, H, M, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, HKV, N, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, HKV, N, D), dtype=v.dtype, device=q.device)
    mptr, kind, ms = _mask_args(mask, B, H, M, N, q)
    s, lo, hi, thresh, nk, hq = _common(q, k, v, p, half_q, seed, ctr)
    bd = max(16, triton.next_power_of_2(D))
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    strides += (v.stride(0), v.stride(1), v.stride(2), *ms)
    flags = dict(CAUSAL=bool(causal), MASK_KIND=kind, Q2=sq == 2.0, IEEE=_dot_mode(q))
    flags |= dict(BLOCK_D=bd, ALIGNED=N % 4 == 0, N_ROUNDS=N_ROUNDS)
    rng = (s, lo, hi, thresh, nk, hq, float(coef), float(max_scale))
    _launch(
        _attn_bwd_dkdv_kernel, _attn_bwd_dkdv_tuned, lambda bm, bn: (triton.cdiv(N, bn), B * HKV), blocks, q.device,
        q, k, v, mptr, do, lse, delta, dk, dv, *strides, H, HKV, H // HKV, M, N, D, float(scale), *rng, **flags,
    )  # fmt: skip
    _launch(
        _attn_bwd_dq_kernel, _attn_bwd_dq_tuned, lambda bm, bn: (triton.cdiv(M, bm), B * H), blocks, q.device,
        q, k, v, mptr, do, lse, delta, dq, *strides, H, H // HKV, M, N, D, float(scale), *rng, **flags,
    )  # fmt: skip
    return dq, dk, dv
