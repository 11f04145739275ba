"""Instrumented forward passes that never touch the process-wide random number generators.

The probe (``inspect``/``patch``) and :func:`hf_sparseout.verify` run a training-mode forward.
Forking and restoring the global RNG around it would roll back the draws other threads make in
the meantime (an unrelated model training in another thread would repeat its dropout masks), so
instead :class:`PrivateRandomMode`, a thread-local ``TorchFunctionMode``:

- answers every dropout call itself, without drawing: the input is returned unchanged
  (``F.dropout``, ``torch.dropout``, channel and alpha dropout), and SDPA runs with ``dropout_p=0``;
- sends every other random draw (``torch.rand``/``randn``/``randint``/``randperm``/``bernoulli``/
  ``multinomial``/``normal``/``poisson``, the ``*_like`` factories, ``Tensor.uniform_`` and the other
  in-place samplers, the ``torch.nn.init`` functions) that has no generator of its own to a private
  ``torch.Generator`` per device,
  seeded with a constant, so the pass is also the same on every call.

A model that reseeds the global generator itself (``torch.seed()``/``torch.manual_seed``: Reformer's
reversible layers do in every training forward, to replay their dropout in the backward pass) is the one
case where the global state is put back: the mode notices the new ``torch.initial_seed()`` on exit and
restores the state from its entry, since that forward already replaced whatever other threads drew from.

Draws outside torch (Python's ``random``, NumPy) cannot be intercepted this way; transformers uses
them only for LayerDrop in a few models and SpecAugment in the speech models, which the probe
disables (see ``probe.stochastic_skips``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hf_sparseout.patcher.calls import DROPOUT_FUNCS, SDPA_DROPOUT, get_arg, with_arg

SEED = 0x5EED
"""The private generators' seed."""

_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal}
_LIKE = {torch.rand_like, torch.randn_like, torch.randint_like}
_FROM_INPUT = {torch.bernoulli, torch.multinomial, torch.poisson}
_TENSOR_METHODS = {
    getattr(torch.Tensor, name)
    for name in (
        "uniform_",
        "normal_",
        "bernoulli_",
        "bernoulli",
        "exponential_",
        "random_",
        "cauchy_",
        "log_normal_",
        "geometric_",
        "multinomial",
    )
}
_INIT = {
    getattr(torch.nn.init, name)
    for name in (
        "uniform_",
        "normal_",
        "trunc_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "orthogonal_",
        "sparse_",
    )
}  # a module built inside a forward (BigBird) initialises its weights
RANDOM_FUNCS = frozenset(_FACTORIES | _LIKE | _FROM_INPUT | _TENSOR_METHODS | _INIT)
"""Every torch sampling function this mode redirects to a private generator."""


class PrivateRandomMode(TorchFunctionMode):
    """No dropout draws, and every other torch random draw from a private, constant-seeded generator.

    Subclasses observe calls by overriding :meth:`on_dropout` and :meth:`on_attention` (both
    called before the call is answered).
    """

    def __init__(self) -> None:
        super().__init__()
        self.generators: dict[torch.device, torch.Generator] = {}

    def __enter__(self):
        self._entry = _GlobalSeeds()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._entry.restore_if_reseeded()

    def generator(self, device: torch.device | str | None) -> torch.Generator:
        """This mode's generator for ``device`` (created and seeded on first use)."""
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self.generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(SEED)
            self.generators[device] = gen
        return gen

    def on_dropout(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Called for every dropout function call (any probability, training flag or not)."""

    def on_attention(self, func: Any, args: tuple, kwargs: dict) -> None:
        """Called for every ``scaled_dot_product_attention`` call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DROPOUT_FUNCS:
            self.on_dropout(func, args, kwargs)
            return get_arg(args, kwargs, 0, "input", None)
        if func is F.scaled_dot_product_attention:
            self.on_attention(func, args, kwargs)
            args, kwargs = with_arg(args, kwargs, *SDPA_DROPOUT, 0.0)
        elif func in RANDOM_FUNCS and kwargs.get("generator") is None:
            kwargs = {**kwargs, "generator": self.generator(_device_of(func, args, kwargs))}
        return func(*args, **kwargs)


def _device_of(func: Any, args: tuple, kwargs: dict) -> torch.device | None:
    if func in _FACTORIES:
        device = kwargs.get("device")
        if device is None:
            for arg in args:  # torch.normal(mean_tensor, std)
                if isinstance(arg, torch.Tensor):
                    return arg.device
            return torch.get_default_device()
        return torch.device(device)
    first = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if func in _LIKE and kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    return first.device if isinstance(first, torch.Tensor) else None


class _GlobalSeeds:
    """The global generators' seeds and states at one moment (CPU, and each initialised CUDA device)."""

    def __init__(self) -> None:
        self.cpu = (torch.initial_seed(), torch.random.get_rng_state())
        self.cuda: list[tuple[int, int, torch.Tensor]] = []
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gens = torch.cuda.default_generators
            self.cuda = [(i, g.initial_seed(), g.get_state()) for i, g in enumerate(gens)]

    def restore_if_reseeded(self) -> None:
        """Put back each generator whose seed changed since (the model reseeded it); leave the others alone."""
        if torch.initial_seed() != self.cpu[0]:
            torch.random.set_rng_state(self.cpu[1])
        for index, seed, state in self.cuda:
            gen = torch.cuda.default_generators[index]
            if gen.initial_seed() != seed:
                gen.set_state(state)


def global_rng_states() -> list[torch.Tensor]:
    """The CPU RNG state and every initialised CUDA device's (for tests and checks)."""
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += list(torch.cuda.get_rng_state_all())
    return states
