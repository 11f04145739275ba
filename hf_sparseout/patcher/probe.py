"""Find a model's dropout sites by running one instrumented training-mode forward pass.

Candidates are found statically: ``nn.Dropout`` modules, float attributes with "drop" in their
name on any module, and the same on every config object reachable from the model (``model.config``,
its sub-configs such as ``text_config``, and any module's own ``self.config`` and its sub-configs).
Each candidate's probability is temporarily replaced by a marker float with a value of its own
(the original nudged by a few ulps when ``p > 0``), and a forward pass under a
``TorchFunctionMode`` records where every marker (and every other dropout with ``p > 0``) ends up:
called as a module, passed to ``F.dropout`` / ``torch.dropout``, or passed to attention
(``scaled_dot_product_attention``'s ``dropout_p`` or ``F.dropout`` on attention probabilities).
A plain float carrying a marker's value is a probability converted before the call
(``F.dropout(h, p=float(self.dropout))``, XGLM): it is attributed to its source, and the patch
redirects such calls by value (see :func:`hf_sparseout.patcher.model.patch`). A probability
computed from a marker (``p * 0.5``) has another value and is reported as ``unattributed``.

Discovery does not depend on chance: LayerDrop (attributes named ``*layerdrop*``/``*layer_drop*``,
on modules and configs) is set to 0 for the pass, and the pass draws nothing from the global RNG
(:class:`~hf_sparseout.patcher.private_rng.PrivateRandomMode`: dropout calls are answered without
drawing, other draws use a private constant-seeded generator). The pass runs under
``torch.no_grad`` and :class:`~hf_sparseout.patcher.snapshot.ModelSnapshot` restores attributes,
buffers, hooks, training flags and config values afterwards. Channel and alpha dropout
(``nn.Dropout2d``, ``F.alpha_dropout``, ...) are not element-wise: they are reported as
``unattributed`` plain dropout, never replaced.
"""

from __future__ import annotations

import inspect as _inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from hf_sparseout.layers import Sparseout
from hf_sparseout.patcher.calls import DROPOUT_FUNCS, ELEMENTWISE, SDPA_DROPOUT, get_arg
from hf_sparseout.patcher.config import is_finite_probability
from hf_sparseout.patcher.private_rng import PrivateRandomMode
from hf_sparseout.patcher.snapshot import ModelSnapshot

STOCHASTIC_SKIPS = ("layerdrop", "layer_drop", "mask_time_prob", "mask_feature_prob")
"""Attribute-name fragments of probabilities that skip whole layers (LayerDrop) or mask spans (SpecAugment in the
speech models: Wav2Vec2, HuBERT, WavLM, Whisper) at random, drawing from NumPy's global RNG; 0 during the probe and
``verify``."""


@dataclass
class Candidate:
    """A place that may hold a dropout probability, and what the probe saw it do.

    ``owner`` is the module holding the attribute; for a config value (``in_config``), the module
    whose ``config`` holds it ("" for the model) and ``config_path`` the sub-config attributes
    leading to it ("" for that config itself, ``"text_config"`` for a sub-config).
    """

    name: str
    owner: str
    attr: str
    p: float
    is_module: bool
    in_config: bool = False
    config_path: str = ""
    module_calls: int = 0
    functional_calls: int = 0
    attention_calls: int = 0
    readers: set[str] = field(default_factory=set)
    converted: dict[tuple[str, str], int] = field(default_factory=dict)
    """Calls (counted above too) that got this probability as a new float: (module, function) -> calls."""

    @property
    def reached(self) -> bool:
        return self.module_calls + self.functional_calls + self.attention_calls > 0


@dataclass
class Unattributed:
    """A dropout with ``p > 0`` whose probability is not a module attribute (literal or computed)."""

    name: str
    func: str
    p: float
    calls: int = 0


@dataclass
class ProbeResult:
    """Everything one probe pass found."""

    candidates: list[Candidate]
    unattributed: list[Unattributed]


class _ProbeP(float):
    cand: Candidate

    def __new__(cls, value: float, cand: Candidate) -> _ProbeP:
        obj = super().__new__(cls, value)
        obj.cand = cand
        return obj

    # A model that copies its config or a module during the forward (SwitchTransformers) keeps the marker.
    def __reduce__(self) -> tuple:
        return (_ProbeP, (float(self), self.cand))

    def __copy__(self) -> _ProbeP:
        return self

    def __deepcopy__(self, memo: dict) -> _ProbeP:
        return self


def _is_attention_module(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "attention" in name or "attn" in name


class _ProbeMode(PrivateRandomMode):
    def __init__(
        self,
        stack: list[tuple[str, nn.Module]],
        unattributed: dict[tuple[str, str], Unattributed],
        by_value: dict[float, Candidate],
    ):
        super().__init__()
        self.stack = stack
        self.unattributed = unattributed
        self.by_value = by_value

    def on_dropout(self, func, args, kwargs) -> None:
        p_index, p_name, t_index, t_name = DROPOUT_FUNCS[func]
        p = get_arg(args, kwargs, p_index, p_name, 0.5)
        x = get_arg(args, kwargs, 0, "input", None)
        training = get_arg(args, kwargs, t_index, t_name, True)
        self._record(func, p, training, isinstance(x, torch.Tensor) and x.dim() == 4, sdpa=False)

    def on_attention(self, func, args, kwargs) -> None:
        self._record(func, get_arg(args, kwargs, *SDPA_DROPOUT, 0.0), True, True, sdpa=True)

    def _record(self, func, p, training, attention_shape: bool, sdpa: bool) -> None:
        top_name, top_module = self.stack[-1] if self.stack else ("", None)
        redirectable = sdpa or func in ELEMENTWISE
        cand = p.cand if isinstance(p, _ProbeP) else None
        converted = cand is None and type(p) is float and redirectable and float(p) in self.by_value
        if converted:  # a marker's value in a new float: F.dropout(h, p=float(self.dropout))
            cand = self.by_value[float(p)]
        if cand is not None and redirectable:
            if cand.is_module and top_name == cand.name:
                return  # the dropout module's own forward: counted by its pre-hook
            if not training:
                return
            cand.readers.add(top_name)
            if converted:
                key = (top_name, func.__name__)
                cand.converted[key] = cand.converted.get(key, 0) + 1
            if sdpa or (attention_shape and top_module is not None and _is_attention_module(top_module)):
                cand.attention_calls += 1
            else:
                cand.functional_calls += 1
        elif training and is_finite_probability(p) and p > 0:
            # a probability that is not an attribute, or a channel/alpha dropout Sparseout does not replace
            key = (top_name, func.__name__)
            entry = self.unattributed.setdefault(
                key, Unattributed(f"{top_name}:{func.__name__}", func.__name__, float(p))
            )
            entry.calls += 1


def _is_probability_attr(attr: str, value: Any) -> bool:
    name = attr.lower()
    return (
        "drop" in name
        and not any(skip in name for skip in STOCHASTIC_SKIPS)
        and type(value) is float
        and is_finite_probability(value)
    )


def reachable_configs(model: nn.Module) -> Iterator[tuple[str, str, PretrainedConfig]]:
    """``(owner module, sub-config path, config)`` for every distinct config object the model can read.

    ``model.config`` and its sub-configs first (owner ""), then each module's own ``config``
    attribute (and its sub-configs) that is not one of those.
    """
    seen: set[int] = set()

    def walk(owner: str, path: str, config: PretrainedConfig) -> Iterator[tuple[str, str, PretrainedConfig]]:
        if id(config) in seen:
            return
        seen.add(id(config))
        yield owner, path, config
        for key, value in list(vars(config).items()):
            if isinstance(value, PretrainedConfig):
                yield from walk(owner, f"{path}.{key}" if path else key, value)

    root = getattr(model, "config", None)
    if isinstance(root, PretrainedConfig):
        yield from walk("", "", root)
    for name, module in model.named_modules():
        config = vars(module).get("config")
        if isinstance(config, PretrainedConfig):
            yield from walk(name, "", config)


def _config_site_name(owner: str, path: str, attr: str) -> str:
    prefix = f"{owner}.config" if owner else "config"
    return f"{prefix}.{path}.{attr}" if path else f"{prefix}.{attr}"


def find_candidates(model: nn.Module) -> list[Candidate]:
    """Dropout modules and dropout-probability float attributes (modules, then configs), in module order."""
    found: list[Candidate] = []
    for name, module in model.named_modules():
        if isinstance(module, Sparseout):
            continue
        if type(module) is nn.Dropout or (
            isinstance(module, nn.Dropout) and type(module).forward is nn.Dropout.forward
        ):
            owner, _, attr = name.rpartition(".")
            found.append(Candidate(name, owner, attr, float(module.p), is_module=True))
        for attr, value in vars(module).items():
            if _is_probability_attr(attr, value):
                site = f"{name}.{attr}" if name else attr
                found.append(Candidate(site, name, attr, value, is_module=False))
    # Some models read a probability from a config at forward time: Falcon's `self.config.hidden_dropout`,
    # Fuyu's `config.text_config.attention_dropout`, BLT's sub-configs held by its sub-models.
    for owner, path, config in reachable_configs(model):
        for attr, value in list(vars(config).items()):
            if _is_probability_attr(attr, value):
                site = _config_site_name(owner, path, attr)
                found.append(Candidate(site, owner, attr, value, is_module=False, in_config=True, config_path=path))
    return found


def holder(model: nn.Module, cand: Candidate) -> Any:
    """The object whose attribute holds ``cand``'s probability (a module, or a config)."""
    if cand.in_config:
        target = model.get_submodule(cand.owner).config
        for part in filter(None, cand.config_path.split(".")):
            target = getattr(target, part)
        return target
    return model.get_submodule(cand.name if cand.is_module else cand.owner)


def default_inputs(model: nn.Module, seq_len: int = 8) -> dict[str, Any]:
    """A one-sequence batch of token ids that any transformers text model accepts."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", None) or 64)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    ids = (torch.arange(seq_len, device=device).unsqueeze(0) * 7 + 3) % vocab
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    params = _inspect.signature(model.forward).parameters
    if "use_cache" in params:
        inputs["use_cache"] = False
    return inputs


def _marker_values(candidates: list[Candidate]) -> list[float]:
    """A distinct value per candidate with ``p > 0`` (its ``p`` moved by k ulps), ``p`` itself otherwise."""
    values, used = [], {c.p for c in candidates}
    for cand in candidates:
        value = cand.p
        if value > 0:
            toward = 0.0 if value == 1.0 else 1.0
            while value in used:
                value = math.nextafter(value, toward)
            used.add(value)
        values.append(value)
    return values


def stochastic_skips(model: nn.Module) -> list[tuple[Any, str]]:
    """``(object, attribute)`` of every LayerDrop-like probability (modules and configs) above 0."""
    found = []
    holders = [*model.modules(), *(config for _, _, config in reachable_configs(model))]
    for obj in holders:
        for attr, value in list(vars(obj).items()):
            name = attr.lower()
            if any(skip in name for skip in STOCHASTIC_SKIPS) and isinstance(value, float) and value > 0:
                found.append((obj, attr))
    return found


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, ``model(inputs)`` otherwise."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def run_probe(model: nn.Module, example_inputs: dict[str, Any] | None = None) -> ProbeResult:
    """Run one instrumented training-mode forward pass and report what reached each candidate.

    The model (attributes, buffers, hooks, training flags, configs) and the global RNG states are
    the same afterwards, whether the pass succeeds or not.
    """
    candidates = find_candidates(model)
    inputs = default_inputs(model) if example_inputs is None else example_inputs
    stack: list[tuple[str, nn.Module]] = []
    unattributed: dict[tuple[str, str], Unattributed] = {}
    by_module = {cand.name: cand for cand in candidates if cand.is_module}
    values = _marker_values(candidates)
    by_value = {v: c for v, c in zip(values, candidates, strict=True) if v > 0}
    snapshot = ModelSnapshot(model, [config for _, _, config in reachable_configs(model)])

    def push(name: str):
        def hook(module, args):
            stack.append((name, module))
            if name in by_module:
                by_module[name].module_calls += 1

        return hook

    def pop(module, args, output):
        if stack:
            stack.pop()

    try:
        for name, module in model.named_modules():
            module.register_forward_pre_hook(push(name))
            module.register_forward_hook(pop, always_call=True)
        targets = [(holder(model, cand), "p" if cand.is_module else cand.attr) for cand in candidates]
        for (target, attr), cand, value in zip(targets, candidates, values, strict=True):
            setattr(target, attr, _ProbeP(value, cand))
        for target, attr in stochastic_skips(model):
            setattr(target, attr, 0.0)
        model.train()
        with torch.no_grad(), _ProbeMode(stack, unattributed, by_value):
            call_model(model, inputs)
    except Exception as err:
        raise RuntimeError(
            f"hf-sparseout could not run its probe forward pass on {type(model).__name__} ({err}). "
            "Pass example_inputs=... (a dict of model inputs) to inspect()/patch()."
        ) from err
    finally:
        snapshot.restore()  # hooks, markers, LayerDrop, training flags, buffers, caches
    return ProbeResult(candidates, list(unattributed.values()))
