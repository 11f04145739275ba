"""The flash Sparseout attention as ``torch.library`` custom ops: what ``torch.compile`` traces.

* ``hf_sparseout::flash_attention_fwd(query, key, value, attn_mask, is_causal, scale, p, q, gradient)
  -> (out, lse, o1, rng_state)`` draws a Philox ``(seed, ctr)`` from the CUDA generator of ``query``'s device
  (as :func:`hf_sparseout.kernels.sparseout_op.sparseout_fwd` does) and runs the flash forward; ``lse`` is the
  float32 log-sum-exp per row, ``o1`` the plain attention output kept for the exact gradient rule at ``q != 2``
  (an empty tensor otherwise), ``rng_state`` a 2-element int64 CPU tensor.
* ``hf_sparseout::flash_attention_bwd(grad_out, query, key, value, attn_mask, out, lse, o1, rng_state,
  is_causal, scale, p, q, gradient) -> (dq, dk, dv)`` regenerates the mask.

Both have fake (meta) implementations and the autograd formula is registered, so a compiled graph holds each
as one opaque node. Eager mode keeps the plain autograd function of :mod:`hf_sparseout.kernels.attention_op`
(less host work per call); both draw the same ``(seed, ctr)`` and run the same kernels.

CPU: a reference implementation (explicit scores, softmax, Sparseout with a keep mask drawn from a CPU
generator seeded by ``(seed, ctr)``, not the kernel's Philox stream) so that ``torch.library.opcheck`` and
``torch.compile`` of the registration can be tested without a GPU. Patched models never send CPU tensors here
(``flash_path_reason``: "not a CUDA tensor"). This module does not import triton.
"""

from __future__ import annotations

import torch

from hf_sparseout.kernels.sparseout_op import _pack, next_philox, unpack_rng_state
from hf_sparseout.ops.sparseout import MAX_SCALE

_TAGS = (torch.Tag.nondeterministic_seeded,)


def stores_o1(q: float, gradient: str) -> bool:
    """Whether the forward keeps ``O1 = softmax V`` (the exact gradient rule at ``q != 2``)."""
    return gradient == "exact" and q != 2.0


@torch.library.custom_op("hf_sparseout::flash_attention_fwd", mutates_args=(), device_types="cuda", tags=_TAGS)
def flash_attention_fwd(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    p: float,
    q: float,
    gradient: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash Sparseout attention forward on CUDA tensors; ``(out, lse, o1, rng_state)``."""
    from hf_sparseout.kernels import attention_triton

    with torch.cuda.device(query.device):
        seed, ctr = next_philox(query.device)
        out, lse, o1 = attention_triton.attention_fwd(
            query, key, value, attn_mask, is_causal, scale, p, q, seed, ctr, stores_o1(q, gradient)
        )
    return out, lse, (o1 if o1 is not None else query.new_empty(0)), _pack(seed, ctr)


@flash_attention_fwd.register_fake
def _(query, key, value, attn_mask, is_causal, scale, p, q, gradient):
    b, h, m, d = query.shape
    out = query.new_empty((b, h, m, d))
    o1 = query.new_empty((b, h, m, d)) if stores_o1(q, gradient) else query.new_empty(0)
    return out, query.new_empty((b, h, m), dtype=torch.float32), o1, torch.empty(2, dtype=torch.int64)


@torch.library.custom_op("hf_sparseout::flash_attention_bwd", mutates_args=(), device_types="cuda")
def flash_attention_bwd(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    o1: torch.Tensor,
    rng_state: torch.Tensor,
    is_causal: bool,
    scale: float,
    p: float,
    q: float,
    gradient: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`flash_attention_fwd` for the mask recorded in ``rng_state``."""
    from hf_sparseout.kernels import attention_triton

    seed, ctr = unpack_rng_state(rng_state)
    with torch.cuda.device(query.device):
        return attention_triton.attention_bwd(
            grad_out, query, key, value, attn_mask, is_causal, scale, p, q, gradient, seed, ctr, out, lse,
            o1 if o1.numel() else None, MAX_SCALE,
        )  # fmt: skip


@flash_attention_bwd.register_fake
def _(grad_out, query, key, value, attn_mask, out, lse, o1, rng_state, is_causal, scale, p, q, gradient):
    fmt = torch.contiguous_format  # as the kernels' (and the CPU reference's) fresh outputs
    return tuple(torch.empty_like(t, memory_format=fmt) for t in (query, key, value))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, attn_mask, is_causal, scale, p, q, gradient = inputs
    out, lse, o1, state = output
    ctx.args = (is_causal, scale, p, q, gradient)
    ctx.save_for_backward(query, key, value, attn_mask, out, lse, o1, state)


def _backward(ctx, grad_out, _grad_lse, _grad_o1, _grad_state):
    query, key, value, attn_mask, out, lse, o1, state = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(
        grad_out.contiguous(), query, key, value, attn_mask, out, lse, o1, state, *ctx.args
    )
    return dq, dk, dv, None, None, None, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------------
# CPU reference (tests of the registration without a GPU)
# ----------------------------------------------------------------------------------------------------------------


def cpu_keep(shape: torch.Size | tuple[int, ...], p: float, seed: int, ctr: int) -> torch.Tensor:
    """The CPU reference's keep mask for ``(seed, ctr)`` (a CPU generator's stream, not the kernel's)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + ctr) % (1 << 63))
    return torch.rand(shape, generator=gen) >= p


def _cpu_probs(query, key, value, attn_mask, is_causal, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, K, V)`` in the compute dtype, K and V repeated over GQA groups."""
    ct = torch.float64 if query.dtype == torch.float64 else torch.float32
    group = query.size(1) // key.size(1)
    k, v = (t.to(ct).repeat_interleave(group, dim=1) for t in (key, value))
    s = query.to(ct) @ k.transpose(-1, -2) * scale
    m, n = s.shape[-2:]
    if is_causal:
        s = s.masked_fill(~torch.ones(m, n, dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.to(ct)
    return torch.softmax(s, -1).nan_to_num(0.0), k, v


def _cpu_noise(shape, p: float, seed: int, ctr: int, dtype: torch.dtype) -> torch.Tensor:
    return cpu_keep(shape, p, seed, ctr).to(dtype) / (1.0 - p) - 1.0


@flash_attention_fwd.register_kernel("cpu")
def _(query, key, value, attn_mask, is_causal, scale, p, q, gradient):
    seed, ctr = int(torch.randint(0, 1 << 62, ()).item()), 0
    probs, _, v = _cpu_probs(query, key, value, attn_mask, is_causal, scale)
    noisy = probs + probs ** (q / 2.0) * _cpu_noise(probs.shape, p, seed, ctr, probs.dtype)
    out = (noisy @ v).to(query.dtype)
    lse = query.new_zeros(query.shape[:-1], dtype=torch.float32)  # the CPU backward recomputes P
    o1 = (probs @ v).to(query.dtype) if stores_o1(q, gradient) else query.new_empty(0)
    return out, lse, o1, _pack(seed, ctr)


@flash_attention_bwd.register_kernel("cpu")
def _(grad_out, query, key, value, attn_mask, out, lse, o1, rng_state, is_causal, scale, p, q, gradient):
    seed, ctr = unpack_rng_state(rng_state)
    probs, k, v = _cpu_probs(query, key, value, attn_mask, is_causal, scale)
    noise = _cpu_noise(probs.shape, p, seed, ctr, probs.dtype)
    h, coef = q / 2.0, (1.0 if gradient == "reference" else q / 2.0)
    noisy = probs + probs**h * noise
    do = grad_out.to(probs.dtype)
    dpt = do @ v.transpose(-1, -2)
    dp = dpt * (1.0 + torch.clamp(coef * probs ** (h - 1.0), max=MAX_SCALE) * noise)
    ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))
    group = query.size(1) // key.size(1)

    def fold(t: torch.Tensor) -> torch.Tensor:  # sum the query heads of each GQA group
        return t.unflatten(1, (key.size(1), group)).sum(2)

    dq = ds @ k * scale
    dk = fold(ds.transpose(-1, -2) @ query.to(probs.dtype) * scale)
    dv = fold(noisy.transpose(-1, -2) @ do)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)
