"""Which implementation :func:`hf_sparseout.sparseout` runs: the eager op or the fused Triton kernel.

* ``"auto"`` (default): the Triton kernel for CUDA tensors of dtype float32, bfloat16 or float16 when
  ``triton`` is installed; the eager PyTorch op otherwise (CPU, float64, no triton), and also when the kernel
  fails to compile or launch (:func:`run_fused`: warned once per cause, ``hf_sparseout.kernels.fallback``).
* ``"eager"``: always the eager op.
* ``"triton"``: always the Triton kernel; a ``RuntimeError`` for an input it cannot take (CPU tensor,
  other dtype, triton missing, no CUDA).
* ``"compiled"``: the eager op's autograd function with its element-wise math (forward, and the gradient
  product in backward) compiled by ``torch.compile`` (inductor: one fused loop each, where the eager op
  makes several passes). Same keep mask and RNG use as ``"eager"``; needs a C++ compiler on CPU; the first
  call for each ``(q, dtype, gradient, noise)`` compiles (seconds). Under an outer ``torch.compile`` the
  plain eager math is traced instead. See bench/results/op_sparseout_cpu.md for what it buys.

``q == 2`` and ``p == 1`` go to :func:`torch.nn.functional.dropout` under every backend (native kernel).

Example:
    >>> from hf_sparseout.ops import backend
    >>> backend.set_backend("eager")
    >>> with backend.use_backend("auto"):
    ...     backend.get_backend()
    'auto'
    >>> backend.get_backend()
    'eager'
    >>> backend.set_backend("auto")
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator

import torch

BACKENDS: tuple[str, ...] = ("auto", "eager", "triton", "compiled")
TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

_backend: str = "auto"
# find_spec does not import triton: `import hf_sparseout` stays cheap and works without it.
_HAS_TRITON: bool = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """``True`` when the ``triton`` package is installed (it is imported only when a kernel runs)."""
    return _HAS_TRITON


def get_backend() -> str:
    """The current backend name: ``"auto"``, ``"eager"`` or ``"triton"``."""
    return _backend


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"sparseout backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the implementation for every later call (process-wide). Raises ``ValueError`` for a bad name."""
    global _backend
    _backend = _check(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the block with backend ``name``, then restore the previous one."""
    global _backend
    previous, _backend = _backend, _check(name)
    try:
        yield
    finally:
        _backend = previous


def use_triton(x: torch.Tensor) -> bool:
    """Whether a Sparseout call on ``x`` (with ``q != 2``, ``0 < p < 1``) goes to the Triton kernel.

    Raises:
        RuntimeError: the backend is ``"triton"`` and ``x`` or the installation cannot use it.
    """
    if _backend in ("eager", "compiled"):
        return False
    ok = _HAS_TRITON and x.is_cuda and x.dtype in TRITON_DTYPES
    if _backend == "triton" and not ok:
        if not _HAS_TRITON:
            why = "the 'triton' package is not installed (pip install 'hf-sparseout[triton]')"
        elif not x.is_cuda:
            why = f"the input is on {x.device}, the kernel needs a CUDA tensor"
        else:
            why = f"the input dtype is {x.dtype}, the kernel takes {TRITON_DTYPES}"
        raise RuntimeError(f"sparseout backend 'triton' was forced but {why}; use set_backend('auto') or 'eager'")
    return ok


def fused_sparseout() -> Callable[..., torch.Tensor]:
    """The Triton-backed op ``f(input, p, q, gradient, inplace)`` (imports the kernel package on first use)."""
    from hf_sparseout.kernels.sparseout_op import sparseout_fused

    return sparseout_fused


ELEMENTWISE_KERNEL = "element-wise Sparseout"


def _probe_elementwise(
    x: torch.Tensor, p: float, q: float, gradient: str, c: torch.Tensor | None
) -> Callable[[], None]:
    """A tiny forward and backward through the kernels of this signature (fixed Philox draw: no RNG use)."""

    def run() -> None:
        from hf_sparseout.kernels import sparseout_triton
        from hf_sparseout.ops.sparseout import MAX_SCALE

        t = torch.linspace(-1.0, 1.0, 64, device=x.device).to(x.dtype)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            out = sparseout_triton.sparseout_fwd(t, p, q, 0, 0, c=c)
            sparseout_triton.sparseout_bwd(torch.ones_like(out), t, p, q, gradient, 0, 0, max_scale=MAX_SCALE, c=c)

    return run


def run_fused(
    x: torch.Tensor, p: float, q: float, gradient: str, inplace: bool, c: torch.Tensor | None
) -> torch.Tensor | None:
    """The fused op on ``x``, failing soft under ``"auto"``: ``None`` when its kernels cannot compile or launch.

    The first call of a signature (device, dtype, ``q``, gradient rule, matched noise) runs the kernels forward
    and backward on a tiny tensor; a failure there or in the call is logged once and remembered
    (:mod:`hf_sparseout.kernels.fallback`), and the caller runs the eager op. A forced ``"triton"`` backend and
    compiled graphs raise instead.
    """
    if _backend == "triton" or torch.compiler.is_compiling():
        return fused_sparseout()(x, p, q, gradient, inplace, c)
    from hf_sparseout.kernels import fallback

    sig = (str(x.device), x.dtype, q, gradient, c is not None)
    if fallback.probe(ELEMENTWISE_KERNEL, sig, _probe_elementwise(x, p, q, gradient, c)) is not None:
        return None
    try:
        return fused_sparseout()(x, p, q, gradient, inplace, c)
    except Exception as err:
        if not fallback.is_kernel_failure(err):
            raise
        fallback.record(ELEMENTWISE_KERNEL, sig, err)
        return None


_COMPILED: tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] | None = None


def _compile_limit_errors() -> tuple[type[Exception], ...]:
    """Dynamo's recompile-limit errors (looked up on use: importing ``torch._dynamo`` imports triton)."""
    exc = torch._dynamo.exc
    return tuple(getattr(exc, name) for name in ("Unsupported", "FailOnRecompileLimitHit") if hasattr(exc, name))


class _Compiled:
    """``torch.compile(fn)`` called on flattened tensors with ``p``, ``q`` specialised (one graph per value).

    Shapes are dynamic (one graph for every size), floats are not: the math branches on ``q`` in Python
    (sqrt chains), so each ``(p, q)`` gets its own graph instead of a symbolic exponent.
    """

    RECOMPILE_LIMIT = 64
    """Graphs per function (one per p, q, dtype, gradient rule, noise mode); past it, the eager math runs."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=True, fullgraph=True)

    def __call__(self, *args: object) -> torch.Tensor:
        shape = next(a.shape for a in args if isinstance(a, torch.Tensor))
        flat = [a.reshape(-1) if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args]
        try:
            with torch._dynamo.config.patch(specialize_float=True, recompile_limit=self.RECOMPILE_LIMIT):
                return self.compiled(*flat).view(shape)
        except Exception as err:  # the recompile limit: warn once, then the eager math
            if not isinstance(err, _compile_limit_errors()):
                raise
            if not getattr(self, "_warned", False):
                msg = f"sparseout 'compiled' backend: running the eager math ({type(err).__name__})"
                warnings.warn(msg, stacklevel=2)
                self._warned = True
            return self.fn(*args)


def cpu_math() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """``(forward_math, backward_math)`` of the eager autograd function: compiled under ``"compiled"``."""
    from hf_sparseout.ops.sparseout import backward_math, forward_math

    if _backend != "compiled" or torch.compiler.is_compiling():
        return forward_math, backward_math
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = (_Compiled(forward_math), _Compiled(backward_math))
    return _COMPILED
