"""Sparseout attention with the flash-style Triton kernels: autograd function and dispatch.

:func:`flash_path_reason` says whether a patched SDPA call can take the kernel (``None``) or why it falls back
to the explicit computation; :func:`sparseout_attention` runs it. The keep mask's Philox ``(seed, ctr)`` is
taken from the CUDA generator of the query's device (as the element-wise kernel does), so
``torch.utils.checkpoint`` recomputes the same mask, and backward regenerates it: backward keeps ``q, k, v``,
the output, one float32 log-sum-exp per row, ``(seed, ctr)`` and, for the exact gradient rule at ``q != 2``,
the plain attention output ``O1``. Under ``torch.compile`` the same kernels run as the custom op
``hf_sparseout::flash_attention_fwd`` (:mod:`hf_sparseout.kernels.attention_custom_op`), one graph node;
:func:`sparseout_attention_or_reason` is the patcher's fail-soft entry (:mod:`hf_sparseout.kernels.fallback`).
This module imports ``triton`` only when a kernel runs.
"""

from __future__ import annotations

import contextlib

import torch

from hf_sparseout.ops import backend as _backend
from hf_sparseout.ops.sparseout import MAX_SCALE

FLASH_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128  # as attention_triton (kept here so the check does not import triton)

_enabled: bool = True


def set_flash_enabled(enabled: bool) -> None:
    """Turn the flash path on or off process-wide (on by default; off: always the explicit path)."""
    global _enabled
    _enabled = bool(enabled)


def flash_enabled() -> bool:
    """Whether patched SDPA calls may use the flash kernel."""
    return _enabled


def flash_path_reason(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    site_q: float,
    noise: str = "raw",
    enable_gqa: bool = False,
) -> str | None:
    """``None`` when the flash kernel can compute this call; otherwise why the explicit path is used."""
    if not _enabled:
        return "flash path disabled (set_flash_enabled(False))"
    if _backend.get_backend() in ("eager", "compiled"):
        return f"sparseout backend {_backend.get_backend()!r}"
    if not _backend.triton_available():
        return "triton is not installed"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "query/key/value are not 4-D"
    if query.dtype not in FLASH_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {query.dtype} (kernel: {FLASH_DTYPES}, all three equal)"
    d = query.size(-1)
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM or key.size(-1) != d or value.shape != key.shape:
        return f"head_dim {d} / value shape {tuple(value.shape)} (kernel: head_dim {MIN_HEAD_DIM}-{MAX_HEAD_DIM})"
    if query.size(0) != key.size(0) or query.size(1) % key.size(1):
        return "batch or head counts do not match"
    if key.size(1) != query.size(1) and not enable_gqa:
        return "different head counts without enable_gqa"
    if not site_q > 0:
        return "q = 0 (the kernel takes q > 0)"
    if noise != "raw":
        return f"noise={noise!r} needs a global sum over the probabilities"
    if attn_mask is not None:
        if attn_mask.requires_grad:
            return "attn_mask requires grad"
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            return f"attn_mask dtype {attn_mask.dtype}"
        try:
            torch.broadcast_shapes(attn_mask.shape, (query.size(0), query.size(1), query.size(2), key.size(2)))
        except RuntimeError:
            return f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast"
        if attn_mask.dim() > 4 or attn_mask.device != query.device:
            return "attn_mask rank or device"
    if not all(_on_cuda(t) for t in (query, key, value)):
        return "not a CUDA tensor"
    return None


def _on_cuda(t: torch.Tensor) -> bool:
    """Whether ``t`` is where the kernel runs (a CUDA tensor); the interpreter tests replace this check."""
    return t.is_cuda


def predicted_path(attn_implementation: str | None, device: torch.device, site_q: float, noise: str = "raw") -> str:
    """The path a patched attention site's training calls are expected to take, for the patch report.

    ``"eager"``: the model's own attention materialises the probabilities (eager attention); ``"flash"``: SDPA
    calls go to the flash kernel (CUDA, triton, q > 0, raw noise; a call whose shape or mask the kernel does
    not take still falls back, see ``site.attention_path``); ``"explicit"``: SDPA calls are computed
    explicitly (CPU, no triton, q = 0, matched noise, flash disabled).
    """
    if attn_implementation != "sdpa":
        return "eager"
    ok = _enabled and _backend.get_backend() not in ("eager", "compiled") and _backend.triton_available()
    ok = ok and torch.device(device).type == "cuda" and site_q > 0 and noise == "raw"
    return "flash" if ok else "explicit"


class _FlashSparseoutAttention(torch.autograd.Function):
    """Autograd function over :mod:`hf_sparseout.kernels.attention_triton` (mask regenerated in backward)."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, p, sq, gradient, seed, ctr):
        from hf_sparseout.kernels import attention_triton as A

        store_o1 = gradient == "exact" and sq != 2.0
        out, lse, o1 = A.attention_fwd(query, key, value, attn_mask, is_causal, scale, p, sq, seed, ctr, store_o1)
        ctx.args = (is_causal, scale, p, sq, gradient, seed, ctr)
        ctx.has_mask, ctx.has_o1 = attn_mask is not None, o1 is not None
        extra = ((attn_mask,) if attn_mask is not None else ()) + ((o1,) if o1 is not None else ())
        ctx.save_for_backward(query, key, value, out, lse, *extra)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from hf_sparseout.kernels import attention_triton as A

        query, key, value, out, lse, *extra = ctx.saved_tensors
        attn_mask = extra.pop(0) if ctx.has_mask else None
        o1 = extra.pop(0) if ctx.has_o1 else None
        is_causal, scale, p, sq, gradient, seed, ctr = ctx.args
        dq, dk, dv = A.attention_bwd(
            grad_out, query, key, value, attn_mask, is_causal, scale, p, sq, gradient, seed, ctr, out, lse, o1,
            MAX_SCALE,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None, None, None, None, None


def sparseout_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    p: float = 0.1,
    q: float = 2.0,
    gradient: str = "reference",
    rng: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``softmax(scale q k^T + mask)`` with Sparseout(p, q) on the probabilities, times ``value``, never storing them.

    ``query`` (B, H, M, D), ``key``/``value`` (B, HKV, N, D) with ``H % HKV == 0`` (GQA); ``attn_mask`` boolean
    (True = attend) or additive float, broadcastable to (B, H, M, N); ``is_causal`` keeps ``j <= i`` (top-left,
    as SDPA). ``rng = (seed, ctr)`` fixes the Philox stream (tests); ``None`` takes it from the CUDA generator.
    """
    import math

    from hf_sparseout.kernels.sparseout_op import next_philox

    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else float(scale)
    if not 0.0 <= p < 1.0 or not q > 0:
        raise ValueError(f"flash Sparseout attention takes 0 <= p < 1 and q > 0, got p={p!r}, q={q!r}")
    if torch.compiler.is_compiling():  # one graph node: the custom op (hf_sparseout/kernels/attention_custom_op.py)
        from hf_sparseout.kernels.attention_custom_op import flash_attention_fwd

        args = (bool(is_causal), scale, float(p), float(q), gradient)
        return flash_attention_fwd(query, key, value, attn_mask, *args)[0]
    if rng is None:
        with torch.cuda.device(query.device):
            rng = next_philox(query.device)
    seed, ctr = rng
    return _FlashSparseoutAttention.apply(
        query, key, value, attn_mask, bool(is_causal), scale, float(p), float(q), gradient, int(seed), int(ctr)
    )


ATTENTION_KERNEL = "flash attention"


def _signature(query: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, q: float, gradient: str) -> tuple:
    """What selects the compiled kernel variants: device, dtype, head size, mask kind, causal, q = 2, O1 stored."""
    mask = None if attn_mask is None else ("bool" if attn_mask.dtype == torch.bool else str(attn_mask.dtype))
    exact_o1 = gradient == "exact" and q != 2.0
    return (str(query.device), query.dtype, query.size(-1), mask, bool(is_causal), q == 2.0, exact_o1)


def _probe_run(query: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, q: float, gradient: str):
    """A tiny forward and backward through the kernels of this signature (fixed Philox draw: no RNG use)."""

    def run() -> None:
        d, n = query.size(-1), 16
        base = torch.linspace(-1.0, 1.0, n * d, device=query.device).reshape(1, 1, n, d)  # no RNG draw
        t = [(base * (i + 1)).to(query.dtype).requires_grad_() for i in range(3)]
        mask = None
        if attn_mask is not None:
            mask = torch.zeros(n, n, dtype=attn_mask.dtype, device=query.device)
            mask = mask.logical_not() if attn_mask.dtype == torch.bool else mask
        with torch.cuda.device(query.device) if query.is_cuda else contextlib.nullcontext():
            out = sparseout_attention(*t, mask, is_causal, None, 0.1, q, gradient, rng=(0, 0))
            torch.autograd.grad(out.float().sum(), t)

    return run


def sparseout_attention_or_reason(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    p: float,
    q: float,
    gradient: str,
) -> tuple[torch.Tensor | None, str | None]:
    """:func:`sparseout_attention`, failing soft: ``(out, None)``, or ``(None, cause)`` when the kernels failed.

    The first call of a signature runs the kernels forward and backward on a tiny input; a compile or launch
    failure there or in the call itself is logged once and remembered (:mod:`hf_sparseout.kernels.fallback`),
    and the caller computes the attention explicitly. Under ``torch.compile`` the kernel runs as is.
    """
    from hf_sparseout.kernels import fallback

    if torch.compiler.is_compiling():
        return sparseout_attention(query, key, value, attn_mask, is_causal, scale, p, q, gradient), None
    sig = _signature(query, attn_mask, is_causal, q, gradient)
    reason = fallback.probe(ATTENTION_KERNEL, sig, _probe_run(query, attn_mask, is_causal, q, gradient))
    if reason is not None:
        return None, reason
    try:
        return sparseout_attention(query, key, value, attn_mask, is_causal, scale, p, q, gradient), None
    except Exception as err:
        if not fallback.is_kernel_failure(err):
            raise
        return None, fallback.record(ATTENTION_KERNEL, sig, err)
