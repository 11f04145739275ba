"""``inspect``, ``patch``, ``unpatch``, ``is_patched``: one matching pass, an exact undo."""

from __future__ import annotations

import copy
import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from hf_sparseout.kernels.attention_op import predicted_path
from hf_sparseout.layers import Sparseout
from hf_sparseout.patcher.config import SparseoutConfig
from hf_sparseout.patcher.patterns import abbreviate, name_matches, select, unmatched
from hf_sparseout.patcher.placements import resolve_insert
from hf_sparseout.patcher.probe import Candidate, holder, reachable_configs, run_probe
from hf_sparseout.patcher.redirect import InsertHook, RedirectingCheckpoint, RedirectingForward, SiteP
from hf_sparseout.patcher.report import Site, SiteReport

STATE_ATTR = "_hf_sparseout_state"
CONFIG_KEY = "sparseout"
"""The key under which a patched model's ``config`` (and so its config.json) records the patch."""
SUPPORTED_ATTENTION = (None, "eager", "sdpa")
IDENTITY_NOTE = "p = 0: identity site (measured, no noise)"


class _Missing(enum.Enum):
    """The undo log's "there was no attribute" marker.

    An enum member, so ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a patched model keep it
    the same object (a plain ``object()`` would be copied, and ``unpatch`` on the copy would set
    attributes to the copy instead of deleting them).
    """

    MISSING = "missing"


_MISSING = _Missing.MISSING


@dataclass
class _Plan:
    report: SiteReport
    candidates: dict[str, Candidate]


@dataclass
class PatchState:
    """What :func:`patch` changed on a model, kept on it so :func:`unpatch` can undo it exactly."""

    config: SparseoutConfig
    report: SiteReport
    undo: list[tuple[str, Any, str, Any]] = field(default_factory=list)


def _state(model: nn.Module) -> PatchState | None:
    # The instance's own attribute: wrappers such as PeftModel forward unknown attributes to the base model.
    return vars(model).get(STATE_ATTR)


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` itself is currently patched by hf-sparseout (not a model it wraps)."""
    return _state(model) is not None


def _attn_implementation(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def _suggest_insert_points(model: nn.Module) -> list[str]:
    """Suffixes of activation modules (e.g. ``mlp.act_fn``), the natural places for new sites."""
    suffixes: list[str] = []
    for name, module in model.named_modules():
        cls = type(module)
        is_activation = cls.__module__.startswith("transformers.activations") or cls.__module__.endswith(
            "modules.activation"
        )
        if is_activation and name:
            suffix = re.sub(r"^.*?\.\d+\.", "", name)
            if suffix not in suffixes:
                suffixes.append(suffix)
    return suffixes


def _site_module_name(cand: Candidate) -> str:
    """Where a site's Sparseout module is registered in the module tree."""
    if cand.is_module:
        return cand.name
    if cand.in_config:
        path = cand.config_path.replace(".", "_")
        child = f"sparseout_config_{path}_{cand.attr}" if path else f"sparseout_config_{cand.attr}"
        return f"{cand.owner}.{child}" if cand.owner else child
    return f"{cand.owner}.{cand.attr}_sparseout" if cand.owner else f"{cand.attr}_sparseout"


def _kind(cand: Candidate) -> str:
    if cand.attention_calls:
        return "config-only" if cand.p == 0 and not cand.is_module else "attention"
    if cand.is_module:
        return "module"
    return "config-only" if cand.p == 0 else "functional"


def _with_overrides(config: SparseoutConfig, name: str, p: float) -> tuple[float, float]:
    """(p, q) for the site ``name``: ``p`` and ``config.q``, then every matching override in order."""
    q = config.q
    for pattern, values in config.overrides.items():
        if name_matches(pattern, name):
            p, q = values.get("p", p), values.get("q", q)
    return p, q


def _overrides_p(config: SparseoutConfig, name: str) -> bool:
    """Whether an override sets ``p`` for the site ``name``."""
    return any("p" in values and name_matches(pattern, name) for pattern, values in config.overrides.items())


def _plan(model: nn.Module, config: SparseoutConfig, example_inputs: dict[str, Any] | None) -> _Plan:
    if is_patched(model):
        raise ValueError("this model is already patched by hf-sparseout: call hf_sparseout.unpatch(model) first")
    impl = _attn_implementation(model)
    probe = run_probe(model, example_inputs)
    candidates = {c.name: c for c in probe.candidates if c.is_module or c.reached}
    sites = [
        Site(c.name, _kind(c), c.p, c.module_calls + c.functional_calls + c.attention_calls)
        for c in candidates.values()
    ]
    names = [s.name for s in sites]
    _check_patterns(config, names, model)

    for site in sites:
        if site.kind == "attention" and config.attention == "sparseout" and impl not in SUPPORTED_ATTENTION:
            site.reason = f"attention implementation {impl!r} is not supported: load with attn_implementation='sdpa'"
        elif not select(config.targets, site.name):
            site.reason = "not in targets"
        elif config.exclude is not None and select(config.exclude, site.name):
            site.reason = "excluded"
        elif site.kind == "attention" and config.attention == "keep":
            site.reason = "attention='keep'"
        else:
            new_p = site.p if config.p is None else config.p
            # p = 0 asked for (config.p == 0 or an override): an identity site, kept so that
            # monitors and penalties see the same sites as at p > 0 (the p = 0 control).
            zero_asked = config.p == 0
            if site.kind == "config-only" and config.targets is None:
                new_p, zero_asked = 0.0, False  # off in the model's config: enabled only when selected explicitly
            new_p, q = _with_overrides(config, site.name, new_p)
            if _overrides_p(config, site.name):
                zero_asked = new_p == 0
            if new_p == 0 and not zero_asked and site.kind == "config-only":
                site.reason = "p = 0 in the model's config: select it with targets (and p) or an override to enable"
            elif new_p == 0 and not zero_asked:
                site.reason = "p = 0: nothing to apply (set p or an override to enable)"
            else:
                site.sparseout, site.new_p, site.q = True, float(new_p), float(q)
                cand = candidates[site.name]
                site.module = _site_module_name(cand)
                if new_p == 0:
                    site.reason = IDENTITY_NOTE

    insert = resolve_insert(model, config.insert)
    inserts = [n for n, _ in model.named_modules() if n and insert is not None and select(insert, n)]
    for name in inserts:
        new_p, q = _with_overrides(config, name, config.p or 0.0)
        reason = IDENTITY_NOTE if new_p == 0 else None
        sites.append(Site(name, "inserted", 0.0, 0, True, float(new_p), float(q), reason, f"{name}.sparseout"))

    for u in probe.unattributed:
        reason = "its probability is a literal or computed value, not a module attribute: cannot be redirected"
        sites.append(Site(u.name, "unattributed", u.p, u.calls, reason=reason))
    param = next(model.parameters(), None)
    for site in sites:
        if site.kind == "attention" and site.sparseout:
            device = param.device if param is not None else "cpu"
            site.path = predicted_path(impl, device, site.q, config.noise)
    report = SiteReport(type(model).__name__, impl, config.to_dict(), sites)
    return _Plan(report, candidates)


def _check_patterns(config: SparseoutConfig, names: list[str], model: nn.Module) -> None:
    available = f"available sites: {abbreviate(names)}" if names else "the model has no dropout sites"
    for field_name in ("targets", "exclude"):
        missing = unmatched(getattr(config, field_name), names)
        if missing:
            raise ValueError(f"{field_name} pattern(s) {missing} match no dropout site; {available}")
    missing = [pat for pat in config.overrides if not any(name_matches(pat, n) for n in names)]
    if missing:
        raise ValueError(f"overrides pattern(s) {missing} match no dropout site; {available}")
    insert = resolve_insert(model, config.insert)
    if insert is not None:
        module_names = [n for n, _ in model.named_modules() if n]
        missing = unmatched(insert, module_names)
        if missing:
            hint = _suggest_insert_points(model)
            raise ValueError(
                f"insert pattern(s) {missing} match no module; activation modules: {abbreviate(hint)}; "
                f"all modules: {abbreviate(module_names, 20)}"
            )


def inspect(
    model: nn.Module, config: SparseoutConfig | None = None, example_inputs: dict[str, Any] | None = None
) -> SiteReport:
    """List every dropout site of ``model`` and what ``config`` would do to it (a dry run).

    A probe forward pass (training mode, no gradients, RNG state preserved) finds the sites;
    ``example_inputs`` replaces its default one-sequence batch of token ids. Raises
    ``ValueError`` if a pattern in ``config`` matches nothing.
    """
    return _plan(model, config or SparseoutConfig(), example_inputs).report


def patch(model: nn.Module, config: SparseoutConfig, example_inputs: dict[str, Any] | None = None) -> SiteReport:
    """Make the dropout sites selected by ``config`` Sparseout, in place; return the report.

    Module sites are swapped for :class:`~hf_sparseout.Sparseout` modules; float probabilities
    (functional and attention dropout) become markers that the owning module's forward redirects
    to a Sparseout module registered beside them; ``insert`` adds forward hooks. Parameters and
    ``state_dict`` are untouched, eval outputs are unchanged, and :func:`unpatch` restores the
    model exactly. Only this instance changes: no class or global function is modified.

    Raises:
        ValueError: a pattern matches nothing, the model is already patched, or nothing would be
            patched (the message suggests ``insert`` points).
    """
    plan = _plan(model, config, example_inputs)
    report = plan.report
    if not report.sparseout_sites:
        hint = _suggest_insert_points(model)
        plain = [s.name for s in report.sites if s.p > 0]
        raise ValueError(
            f"nothing to patch in {report.model}: "
            + (
                f"dropout sites {abbreviate(plain, 10)} are all excluded. "
                if plain
                else "it has no dropout with p > 0. "
            )
            + (
                f"Add new Sparseout sites with insert, e.g. SparseoutConfig(p=0.1, insert={hint[:1]!r})"
                if hint
                else "Add new Sparseout sites with SparseoutConfig(p=..., insert=[<module names>])"
            )
        )
    state = PatchState(config, report)
    readers: set[str] = set()
    by_value: dict[str, dict[float, nn.Module]] = {}  # reader -> {probability value: site module}
    taken = {s.p for s in report.sites} | {s.new_p for s in report.sites if s.new_p is not None}
    try:
        _own_configs(model, state.undo)
        for site in report.sparseout_sites:
            module = Sparseout(p=site.new_p, q=site.q, gradient=config.gradient, noise=config.noise)
            module.p = SiteP(site.new_p, site.name, module)
            if site.kind == "inserted":
                target = model.get_submodule(site.name)
                module.train(target.training)
                target.add_module("sparseout", module)
                handle = target.register_forward_hook(InsertHook(module))
                state.undo.append(("insert", target, "sparseout", handle))
                continue
            cand = plan.candidates[site.name]
            owner = holder(model, cand) if cand.in_config else model.get_submodule(cand.owner)
            original = getattr(owner, cand.attr)
            readers |= cand.readers
            if cand.converted:
                # Some readers pass float(p) (XGLM): give this site a value of its own (new_p moved by a
                # few ulps) and redirect calls with exactly that value inside those readers.
                value = math.nextafter(site.new_p, 0.0 if site.new_p == 1.0 else 1.0)
                while value in taken:
                    value = math.nextafter(value, 0.0 if site.new_p == 1.0 else 1.0)
                taken.add(value)
                module.p = SiteP(value, site.name, module)
                for reader, _ in cand.converted:
                    by_value.setdefault(reader, {})[value] = module
            if cand.is_module:
                module.inplace = original.inplace
                module.train(original.training)
                setattr(owner, cand.attr, module)
                state.undo.append(("setattr", owner, cand.attr, original))
            else:
                parent_name, _, child = site.module.rpartition(".")
                parent = model.get_submodule(parent_name)
                module.train(parent.training)
                if child in parent._modules:
                    raise ValueError(f"{parent_name or type(model).__name__} already has a submodule {child!r}")
                parent.add_module(child, module)
                state.undo.append(("delmodule", parent, child, _MISSING))
                setattr(owner, cand.attr, module.p)
                state.undo.append(("setattr", owner, cand.attr, original))
        model_config = getattr(model, "config", None)
        if model_config is not None and hasattr(model_config, "to_dict"):
            # save_pretrained then writes the patch into config.json under "sparseout".
            previous = model_config.__dict__.get(CONFIG_KEY, _MISSING)
            setattr(model_config, CONFIG_KEY, config.to_dict())
            state.undo.append(("setattr", model_config, CONFIG_KEY, previous))
        for name in sorted(readers):
            reader = model.get_submodule(name)
            previous = reader.__dict__.get("forward", _MISSING)
            reader.forward = RedirectingForward(reader, reader.forward, by_value.get(name))
            state.undo.append(("forward", reader, "forward", previous))
    except BaseException:
        _undo(state)
        raise
    report.patched = True
    object.__setattr__(model, STATE_ATTR, state)
    return report


def _own_configs(model: nn.Module, undo: list) -> None:
    """Give ``model`` its own copy of every config object it reads (restored by :func:`unpatch`).

    Two models built from one config object share it: the patch's markers and its ``sparseout``
    block must land in this model's copy only. Every module attribute holding one of the configs
    (``model.config``, a layer's ``self.config``, a sub-config such as ``self.text_config``) is
    pointed at the copy; sub-config links between them are kept (one ``deepcopy`` memo).
    """
    originals = [config for _, _, config in reachable_configs(model)]
    memo: dict[int, Any] = {}
    for config in originals:
        copy.deepcopy(config, memo)
    copies = {id(config): memo[id(config)] for config in originals}
    for module in model.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, PretrainedConfig) and id(value) in copies:
                undo.append(("setattr", module, key, value))
                setattr(module, key, copies[id(value)])


def _undo(state: PatchState) -> None:
    for action, target, name, value in reversed(state.undo):
        if action == "insert":
            value.remove()
        if action == "forward":
            ckpt = target.__dict__.get("_gradient_checkpointing_func")
            if isinstance(ckpt, RedirectingCheckpoint):
                target._gradient_checkpointing_func = ckpt.inner
        if value is _MISSING or action == "insert":
            delattr(target, name)  # added by the patch (an attribute, a submodule, an instance forward)
        else:
            setattr(target, name, value)
    state.undo.clear()


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch` exactly: original modules, attributes and forwards come back."""
    state = _state(model)
    if state is None:
        raise ValueError("this model is not patched by hf-sparseout")
    _undo(state)
    object.__delattr__(model, STATE_ATTR)
    return model


def replaced_config_values(model: nn.Module) -> list[tuple[Any, str, Any]]:
    """``(config, attribute, original value)`` for each config probability the patch turned into a marker.

    A few models (Falcon) read a dropout probability from ``model.config`` at run time; saving the
    config must write the original values (see ``hf_sparseout.save_pretrained``).
    """
    state = _state(model)
    if state is None:
        return []
    return [
        (target, name, original)
        for action, target, name, original in state.undo
        if action == "setattr" and not isinstance(target, nn.Module) and isinstance(getattr(target, name), SiteP)
    ]


def get_report(model: nn.Module) -> SiteReport:
    """The report of the patch currently applied to ``model``."""
    state = _state(model)
    if state is None:
        raise ValueError("this model is not patched by hf-sparseout")
    for site in state.report.sites:  # a flash kernel that failed (kernels/fallback.py): say so in `path`
        if site.path == "flash" and site.module:
            got = getattr(model.get_submodule(site.module), "attention_path", None)
            if isinstance(got, str) and got.startswith("explicit (flash failed"):
                site.path = got
    return state.report
