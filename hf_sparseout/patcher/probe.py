"""Find a model's dropout sites by running one instrumented training-mode forward pass.

Candidates are found statically (``nn.Dropout`` modules, and float attributes with "drop" in
their name on any module); each candidate's probability is temporarily replaced by a marker
float, and a forward pass under a ``TorchFunctionMode`` records where every marker (and every
other dropout with ``p > 0``) ends up: called as a module, passed to ``F.dropout`` /
``torch.dropout``, or passed to attention (``scaled_dot_product_attention``'s ``dropout_p`` or
``F.dropout`` on attention probabilities). The pass runs under ``torch.no_grad`` with the RNG
state forked, and every attribute, hook and training flag is restored afterwards. Channel and
alpha dropout (``nn.Dropout2d``, ``F.alpha_dropout``, ...) are not element-wise: they are reported
as ``unattributed`` plain dropout, never replaced.
"""

from __future__ import annotations

import inspect as _inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from hf_sparseout.layers import Sparseout
from hf_sparseout.patcher.calls import DROPOUT_FUNCS, ELEMENTWISE, SDPA_DROPOUT, get_arg, with_arg
from hf_sparseout.patcher.config import is_finite_probability


@dataclass
class Candidate:
    """A place that may hold a dropout probability, and what the probe saw it do."""

    name: str
    owner: str
    attr: str
    p: float
    is_module: bool
    in_config: bool = False
    module_calls: int = 0
    functional_calls: int = 0
    attention_calls: int = 0
    readers: set[str] = field(default_factory=set)

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


def _is_attention_module(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "attention" in name or "attn" in name


class _ProbeMode(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]], unattributed: dict[tuple[str, str], Unattributed]):
        super().__init__()
        self.stack = stack
        self.unattributed = unattributed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = DROPOUT_FUNCS.get(func)
        if spec is not None:
            p_index, p_name, t_index, t_name = spec
            p = get_arg(args, kwargs, p_index, p_name, 0.5)
            x = get_arg(args, kwargs, 0, "input", None)
            training = get_arg(args, kwargs, t_index, t_name, True)
            self._record(func, p, training, x is not None and x.dim() == 4, sdpa=False)
            if isinstance(p, _ProbeP):
                args, kwargs = with_arg(args, kwargs, p_index, p_name, float(p))
        elif func is F.scaled_dot_product_attention:
            p = get_arg(args, kwargs, *SDPA_DROPOUT, 0.0)
            self._record(func, p, True, True, sdpa=True)
            if isinstance(p, _ProbeP):
                args, kwargs = with_arg(args, kwargs, *SDPA_DROPOUT, float(p))
        return func(*args, **kwargs)

    def _record(self, func, p, training, attention_shape: bool, sdpa: bool) -> None:
        top_name, top_module = self.stack[-1] if self.stack else ("", None)
        if isinstance(p, _ProbeP) and (sdpa or func in ELEMENTWISE):
            cand = p.cand
            if cand.is_module and top_name == cand.name:
                return  # the dropout module's own forward: counted by its pre-hook
            if not training:
                return
            cand.readers.add(top_name)
            if sdpa or (attention_shape and top_module is not None and _is_attention_module(top_module)):
                cand.attention_calls += 1
            else:
                cand.functional_calls += 1
        elif training and is_finite_probability(p) and p > 0:
            # a probability that is not an attribute, or a channel/alpha dropout Sparseout does not replace
            key = (top_name, func.__name__)
            entry = self.unattributed.setdefault(key, Unattributed(f"{top_name}:{func.__name__}", func.__name__, p))
            entry.calls += 1


def find_candidates(model: nn.Module) -> list[Candidate]:
    """Dropout modules and dropout-probability float attributes, in module order."""
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
            if "drop" in attr.lower() and type(value) is float and is_finite_probability(value):
                site = f"{name}.{attr}" if name else attr
                found.append(Candidate(site, name, attr, value, is_module=False))
    config = getattr(model, "config", None)
    if config is not None:
        # Some models (Falcon) read `self.config.hidden_dropout` at forward time.
        for attr, value in vars(config).items():
            if "drop" in attr.lower() and type(value) is float and is_finite_probability(value):
                found.append(Candidate(f"config.{attr}", "", attr, value, is_module=False, in_config=True))
    return found


def holder(model: nn.Module, cand: Candidate) -> Any:
    """The object whose attribute holds ``cand``'s probability (a module, or the model's config)."""
    if cand.in_config:
        return model.config
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


def run_probe(model: nn.Module, example_inputs: dict[str, Any] | None = None) -> ProbeResult:
    """Run one instrumented training-mode forward pass and report what reached each candidate."""
    candidates = find_candidates(model)
    inputs = default_inputs(model) if example_inputs is None else example_inputs
    stack: list[tuple[str, nn.Module]] = []
    unattributed: dict[tuple[str, str], Unattributed] = {}
    handles = []
    saved_p: list[tuple[Any, str, Any]] = []
    training = {m: m.training for m in model.modules()}
    by_module = {cand.name: cand for cand in candidates if cand.is_module}

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
            handles.append(module.register_forward_pre_hook(push(name)))
            handles.append(module.register_forward_hook(pop, always_call=True))
        for cand in candidates:
            target = holder(model, cand)
            attr = "p" if cand.is_module else cand.attr
            saved_p.append((target, attr, getattr(target, attr)))
            setattr(target, attr, _ProbeP(cand.p, cand))
        model.train()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _ProbeMode(stack, unattributed):
            if isinstance(inputs, dict):
                model(**inputs)
            else:
                model(inputs)
    except Exception as err:
        raise RuntimeError(
            f"hf-sparseout could not run its probe forward pass on {type(model).__name__} ({err}). "
            "Pass example_inputs=... (a dict of model inputs) to inspect()/patch()."
        ) from err
    finally:
        for handle in handles:
            handle.remove()
        for target, attr, value in reversed(saved_p):
            setattr(target, attr, value)
        for module, flag in training.items():
            module.training = flag
    return ProbeResult(candidates, list(unattributed.values()))
