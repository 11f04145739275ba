"""Fail soft: a Triton kernel that cannot compile or launch must not stop training.

A compile or launch failure of the flash attention kernel or of the element-wise kernel (an unsupported GPU,
a triton/driver mismatch, a shape or resource limit the kernel does not take) sends that call, and every later
call with the same kernel signature, to the explicit attention path or the eager op; the cause is logged once
(``hf_sparseout.logs``, level warning) and kept in :func:`failures`. Each signature's kernels are first run
forward and backward on a tiny input of the same kind (same dtype, head size, mask kind, ``q``, gradient rule:
the same compiled variants), so a backward kernel that cannot compile is found before a training step depends
on it. A numerical mismatch is not a failure: nothing here compares values (``python -m bench.gpu_check``
does). Out-of-memory errors are not caught (the fallback needs more memory, not less).

This module does not import triton.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from hf_sparseout.logs import get_logger

_failed: dict[tuple[str, Hashable], str] = {}
_probed: set[tuple[str, Hashable]] = set()
_warned: set[tuple[str, str]] = set()


def reason_of(err: BaseException) -> str:
    """A one-line cause: the exception type and the first line of its message (at most 200 characters)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")[:200]


def is_kernel_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failure to fall back from (any ``Exception`` but out-of-memory)."""
    return isinstance(err, Exception) and not isinstance(err, torch.OutOfMemoryError)


def record(kernel: str, key: Hashable, err: BaseException) -> str:
    """Remember that ``kernel`` failed for signature ``key``, log the cause once, and return it."""
    reason = reason_of(err)
    _failed[(kernel, key)] = reason
    if (kernel, reason) not in _warned:
        _warned.add((kernel, reason))
        fallback = "the explicit attention path" if "attention" in kernel else "the eager op"
        get_logger(__name__).warning(
            f"hf_sparseout: the {kernel} Triton kernel failed ({reason}); using {fallback} for these calls"
        )
    return reason


def failed(kernel: str, key: Hashable) -> str | None:
    """The recorded cause when ``kernel`` failed for ``key``, else ``None``."""
    return _failed.get((kernel, key))


def probe(kernel: str, key: Hashable, run: Callable[[], object]) -> str | None:
    """Run ``run()`` (a tiny forward and backward) the first time ``key`` is seen; the failure cause or ``None``.

    Under ``torch.inference_mode`` nothing is probed (no backward can run there; the next call outside probes).
    """
    if (kernel, key) not in _probed and not torch.is_inference_mode_enabled():
        _probed.add((kernel, key))
        try:
            with torch.enable_grad():
                run()
        except Exception as err:
            if not is_kernel_failure(err):
                _probed.discard((kernel, key))
                raise
            return record(kernel, key, err)
    return failed(kernel, key)


def failures() -> dict[str, str]:
    """Every recorded failure, ``"<kernel> <signature>" -> cause``."""
    return {f"{kernel} {key}": reason for (kernel, key), reason in _failed.items()}


def reset() -> None:
    """Forget every failure, probe and warning (tests; a process that changed its triton or GPU)."""
    _failed.clear()
    _probed.clear()
    _warned.clear()
