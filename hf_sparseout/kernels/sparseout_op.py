"""Sparseout as ``torch.library`` custom ops backed by the Triton kernels (CUDA only).

* ``hf_sparseout::sparseout_fwd(x, p, q, gradient, c) -> (out, rng_state)`` draws a Philox ``(seed, ctr)`` from
  torch's CUDA generator of ``x``'s device (advancing its offset by 4, as a torch kernel would) and runs the
  fused forward. ``rng_state`` is a 2-element int64 CPU tensor; with ``x`` it is all backward keeps.
* ``hf_sparseout::sparseout_bwd(grad, x, rng_state, p, q, gradient, c) -> grad_input`` regenerates the mask.

``c`` is the matched-noise scale (a 0-d tensor, ``noise="matched"``) or ``None`` (raw noise); a constant for
autograd.

Both have fake (meta) implementations and the autograd formula is registered with
``torch.library.register_autograd``, so ``torch.compile`` traces them as single opaque nodes without graph
breaks. ``torch.utils.checkpoint`` restores the CUDA generator before recomputing, so the recomputed forward
draws the same ``(seed, ctr)`` and the same mask. CUDA-graph capture is not supported (the generator offset is
advanced from the host).
"""

from __future__ import annotations

import torch

from hf_sparseout.ops.sparseout import MAX_SCALE

_U64 = 1 << 64
_I64 = 1 << 63


def next_philox(device: torch.device) -> tuple[int, int]:
    """Take ``(seed, ctr)`` from the CUDA generator of ``device`` and advance its offset past them."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    gen = torch.cuda.default_generators[index]
    offset = gen.get_offset()
    gen.set_offset(offset + 4)
    return gen.initial_seed() % _U64, offset // 4


def _pack(seed: int, ctr: int) -> torch.Tensor:
    return torch.tensor([seed - _U64 if seed >= _I64 else seed, ctr - _U64 if ctr >= _I64 else ctr], dtype=torch.int64)


def unpack_rng_state(state: torch.Tensor) -> tuple[int, int]:
    """``(seed, ctr)`` from the ``rng_state`` tensor returned by ``sparseout_fwd``."""
    seed, ctr = state.tolist()
    return seed % _U64, ctr % _U64


_TAGS = (torch.Tag.nondeterministic_seeded,)


@torch.library.custom_op("hf_sparseout::sparseout_fwd", mutates_args=(), device_types="cuda", tags=_TAGS)
def sparseout_fwd(
    x: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Sparseout forward on a CUDA tensor; returns ``(out, rng_state)``."""
    from hf_sparseout.kernels import sparseout_triton

    with torch.cuda.device(x.device):
        seed, ctr = next_philox(x.device)
        out = sparseout_triton.sparseout_fwd(x, p, q, seed, ctr, c=c)
    return out, _pack(seed, ctr)


@sparseout_fwd.register_fake
def _(
    x: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty(2, dtype=torch.int64)


@torch.library.custom_op("hf_sparseout::sparseout_bwd", mutates_args=(), device_types="cuda")
def sparseout_bwd(
    grad: torch.Tensor,
    x: torch.Tensor,
    rng_state: torch.Tensor,
    p: float,
    q: float,
    gradient: str,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Input gradient of :func:`sparseout_fwd` for the mask recorded in ``rng_state``."""
    from hf_sparseout.kernels import sparseout_triton

    seed, ctr = unpack_rng_state(rng_state)
    with torch.cuda.device(x.device):
        gi = sparseout_triton.sparseout_bwd(grad, x, p, q, gradient, seed, ctr, max_scale=MAX_SCALE, c=c)
    return gi


@sparseout_bwd.register_fake
def _(
    grad: torch.Tensor,
    x: torch.Tensor,
    rng_state: torch.Tensor,
    p: float,
    q: float,
    gradient: str,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    x, p, q, gradient, c = inputs
    ctx.p, ctx.q, ctx.gradient, ctx.has_c = p, q, gradient, c is not None
    ctx.save_for_backward(x, output[1], *(() if c is None else (c,)))


def _backward(ctx, grad_out: torch.Tensor, _grad_state: torch.Tensor | None):
    x, state, *extra = ctx.saved_tensors
    c = extra[0] if ctx.has_c else None
    return sparseout_bwd(grad_out, x, state, ctx.p, ctx.q, ctx.gradient, c), None, None, None, None


sparseout_fwd.register_autograd(_backward, setup_context=_setup_context)


class _FusedSparseout(torch.autograd.Function):
    """Eager-mode twin of the custom ops: same kernels, same RNG draws, less Python dispatch per call.

    ``torch.library.custom_op`` with ``register_autograd`` adds roughly 0.1 ms of host work per forward+backward;
    at the sizes of a transformer's dropout sites that is more than the kernels take, so eager mode uses this
    plain autograd function and compiled graphs use the custom ops (see :func:`sparseout_fused`).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None) -> torch.Tensor:
        from hf_sparseout.kernels import sparseout_triton

        with torch.cuda.device(x.device):
            seed, ctr = next_philox(x.device)
            out = sparseout_triton.sparseout_fwd(x, p, q, seed, ctr, c=c)
        ctx.p, ctx.q, ctx.gradient, ctx.seed, ctx.ctr = p, q, gradient, seed, ctr
        ctx.save_for_backward(x, *(() if c is None else (c,)))
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        from hf_sparseout.kernels import sparseout_triton

        x, *extra = ctx.saved_tensors
        c = extra[0] if extra else None
        with torch.cuda.device(x.device):
            gi = sparseout_triton.sparseout_bwd(
                grad_out, x, ctx.p, ctx.q, ctx.gradient, ctx.seed, ctx.ctr, max_scale=MAX_SCALE, c=c
            )
        return gi, None, None, None, None


def sparseout_fused(
    input: torch.Tensor,
    p: float,
    q: float,
    gradient: str = "reference",
    inplace: bool = False,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparseout on a CUDA tensor with the Triton kernels (``0 < p < 1``, ``q != 2``; arguments already checked).

    Under ``torch.compile`` this is the custom op ``hf_sparseout::sparseout_fwd`` (one graph node, no graph
    break); in eager mode an autograd function running the same kernels on the same RNG draws. Either way
    backward keeps only ``input`` (plus the Philox seed and counter). ``inplace=True`` writes the result into
    ``input`` (which then costs a copy of it, as the eager op). ``c``: the matched-noise scale (0-d tensor) or
    ``None``.
    """
    x = input.clone() if inplace else input
    if torch.compiler.is_compiling():
        out, _ = sparseout_fwd(x, float(p), float(q), gradient, c)
    else:
        out = _FusedSparseout.apply(x, float(p), float(q), gradient, c)
    return input.copy_(out) if inplace else out
