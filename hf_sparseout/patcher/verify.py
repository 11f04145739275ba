"""``verify``: count, independently of the probe, which dropouts reach torch as Sparseout and which as plain.

:func:`verify` runs one training-mode forward (no gradients, LayerDrop off, the model's state
restored afterwards, nothing drawn from the global RNG) and records every dropout application with
``p > 0`` per call place: Sparseout module calls (forward pre-hooks on every
:class:`~hf_sparseout.Sparseout` module; identity sites patched at ``p = 0`` are counted too) and
plain dropout that reaches torch (``F.dropout`` and the other dropout functions, SDPA's
``dropout_p``), named ``<module>:<function>`` after the innermost module running. For a patched
model it also checks the patch's report against what it saw: every Sparseout site applied as often
as the report says (an attention site at ``p = 0`` under SDPA is never called: nothing to apply),
and no more source lines applying plain dropout than the report's count of plain sites. Plain
dropout at an attention site the patch kept plain on purpose (``attention="keep"``, finetune's
default) is reported as ``kept``, not as uncovered. Run it after upgrading transformers.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_sparseout.errors import UsageError
from hf_sparseout.layers import Sparseout
from hf_sparseout.patcher.calls import DROPOUT_FUNCS, SDPA_DROPOUT, get_arg
from hf_sparseout.patcher.config import is_finite_probability
from hf_sparseout.patcher.model import _state
from hf_sparseout.patcher.private_rng import PrivateRandomMode
from hf_sparseout.patcher.probe import call_model, default_inputs, reachable_configs, stochastic_skips
from hf_sparseout.patcher.snapshot import ModelSnapshot

_SKIP_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).parents[1]))


def _source_line() -> tuple[str, int]:
    """The model code line that made the current call: the first frame outside torch and hf-sparseout."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIRS):
        frame = frame.f_back
    return (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("?", 0)


@dataclass
class VerifyCall:
    """Dropout applications seen at one place.

    Attributes:
        place: the Sparseout module's name, or ``<module>:<function>`` for plain dropout.
        reached_as: ``"sparseout"``, ``"plain"``, or ``"kept"`` (plain dropout at an attention site the
            report keeps plain on purpose, ``attention="keep"``).
        p: the probability of the first call seen there; ``calls``: applications in the forward.
        site: the report's site for a Sparseout or kept place (``None`` if unknown or not patched).
    """

    place: str
    reached_as: str
    p: float
    calls: int = 0
    site: str | None = None
    lines: set[tuple[str, int]] = field(default_factory=set, repr=False)
    """The source lines (file, line) of model code that made these calls (plain dropout only)."""


@dataclass
class VerifyReport:
    """The result of :func:`verify`."""

    model: str
    patched: bool
    calls: list[VerifyCall] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)

    @property
    def sparseout(self) -> list[VerifyCall]:
        """Places where dropout reached torch as Sparseout."""
        return [c for c in self.calls if c.reached_as == "sparseout"]

    @property
    def uncovered(self) -> list[VerifyCall]:
        """Places where plain dropout still reached torch, and the patch did not mean it to."""
        return [c for c in self.calls if c.reached_as == "plain"]

    @property
    def kept(self) -> list[VerifyCall]:
        """Places where plain dropout reached torch at attention sites kept plain on purpose (``attention="keep"``)."""
        return [c for c in self.calls if c.reached_as == "kept"]

    @property
    def agrees(self) -> bool:
        """Whether the patch's report matches what was seen (``True`` for an unpatched model: nothing to check)."""
        return not self.disagreements

    @property
    def ok(self) -> bool:
        """No plain dropout reached torch except where the patch keeps it, and the report agrees."""
        return not self.uncovered and self.agrees

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "model": self.model,
            "patched": self.patched,
            "ok": self.ok,
            "agrees": self.agrees,
            "disagreements": self.disagreements,
            "calls": [{k: v for k, v in asdict(c).items() if k != "lines"} for c in self.calls],
        }

    def to_json(self) -> str:
        """The report as JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """A fixed-width table, one row per place, then the verdict."""
        header = ("place", "reached torch as", "p", "calls", "site")
        rows = [(c.place, c.reached_as, f"{c.p:g}", str(c.calls), c.site or "") for c in self.calls]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        n_sparse = sum(c.calls for c in self.sparseout)
        n_plain = sum(c.calls for c in self.uncovered)
        n_kept = sum(c.calls for c in self.kept)
        lines += [f"- {d}" for d in self.disagreements]
        verdict = "OK" if self.ok else ("UNCOVERED" if self.uncovered else "REPORT DISAGREES")
        kept = f", {n_kept} kept plain (attention='keep')" if n_kept else ""
        lines.append(
            f"{self.model} ({'patched' if self.patched else 'not patched'}): {n_sparse} Sparseout{kept} and {n_plain} "
            f"plain dropout applications, {len(self.uncovered)} places with plain dropout; "
            f"report {'agrees' if self.agrees else 'disagrees'}: {verdict}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()


class _CountMode(PrivateRandomMode):
    def __init__(self, stack: list[tuple[str, nn.Module]], seen: dict[str, VerifyCall]) -> None:
        super().__init__()
        self.stack = stack
        self.seen = seen

    def on_dropout(self, func, args, kwargs) -> None:
        p_index, p_name, t_index, t_name = DROPOUT_FUNCS[func]
        if get_arg(args, kwargs, t_index, t_name, True):
            self._plain(func, get_arg(args, kwargs, p_index, p_name, 0.5))

    def on_attention(self, func, args, kwargs) -> None:
        self._plain(func, get_arg(args, kwargs, *SDPA_DROPOUT, 0.0))

    def _plain(self, func, p) -> None:
        if not (is_finite_probability(p) and p > 0):
            return
        name, module = self.stack[-1] if self.stack else ("", None)
        if isinstance(module, Sparseout):
            return  # Sparseout's own q = 2 path (never reached here: it runs as the identity)
        place = f"{name}:{func.__name__}"
        entry = self.seen.setdefault(place, VerifyCall(place, "plain", float(p)))
        entry.calls += 1
        entry.lines.add(_source_line())


def _refuse_compiled(model: nn.Module) -> None:
    """A ``torch.compile`` wrapper runs a compiled graph: the per-module hooks and dropout calls are not seen."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    if eval_frame is not None and isinstance(model, getattr(eval_frame, "OptimizedModule", ())):
        raise UsageError(
            f"verify got a torch.compile wrapper ({type(model).__name__} around {type(model._orig_mod).__name__}): "
            "the compiled graph hides the module calls and dropout applications verify counts",
            "verify the uncompiled model: hf_sparseout.verify(compiled._orig_mod), or verify before torch.compile "
            "(the compiled model runs the same patched modules)",
        )


def verify(model: nn.Module, example_inputs: dict[str, Any] | None = None) -> VerifyReport:
    """Run one training-mode forward and report which dropouts reached torch as Sparseout and which as plain.

    ``example_inputs`` (a dict of model inputs) replaces the default one-sequence batch of token ids.
    The forward runs under ``torch.no_grad`` with LayerDrop off; attributes, buffers, hooks,
    training flags and configs are restored afterwards, and nothing is drawn from the global RNG
    (dropout and Sparseout are counted, not applied; other draws use a private generator). For a
    patched model the report's sites are checked against the counts (:attr:`VerifyReport.disagreements`).

    Raises:
        UsageError: ``model`` is a ``torch.compile`` wrapper (verify ``model._orig_mod``).
        RuntimeError: the forward pass failed (pass ``example_inputs``).
    """
    _refuse_compiled(model)
    inputs = default_inputs(model) if example_inputs is None else example_inputs
    state = _state(model)
    stack: list[tuple[str, nn.Module]] = []
    seen: dict[str, VerifyCall] = {}
    sparse_names = {m: n for n, m in model.named_modules() if isinstance(m, Sparseout)}
    snapshot = ModelSnapshot(model, [config for _, _, config in reachable_configs(model)])

    def push(name: str):
        def hook(module, args):
            stack.append((name, module))
            if module in sparse_names and module.training:  # p = 0 too: an identity site is still a site
                entry = seen.setdefault(name, VerifyCall(name, "sparseout", float(module.p)))
                entry.calls += 1
                module.training = False  # the identity: counted, not applied (no RNG draw)

        return hook

    def pop(module, args, output):
        if stack:
            stack.pop()
        if module in sparse_names:
            module.training = True

    try:
        for target, attr in stochastic_skips(model):
            setattr(target, attr, 0.0)
        model.train()
        for name, module in model.named_modules():
            module.register_forward_pre_hook(push(name))
            module.register_forward_hook(pop, always_call=True)
        with torch.no_grad(), _CountMode(stack, seen):
            call_model(model, inputs)
    except Exception as err:
        raise RuntimeError(
            f"hf-sparseout could not run the verify forward pass on {type(model).__name__} ({err}). "
            "Pass example_inputs=... (a dict of model inputs)."
        ) from err
    finally:
        snapshot.restore()
    report = VerifyReport(type(model).__name__, state is not None, list(seen.values()))
    if state is not None:
        _compare(report, state.report)
    return report


def _compare(result: VerifyReport, report: Any) -> None:
    """Check the patch's report against the counts; record each mismatch in ``result.disagreements``."""
    by_module = {s.module: s for s in report.sparseout_sites}
    seen = {c.place: c for c in result.sparseout}
    for call in result.sparseout:
        site = by_module.get(call.place)
        call.site = site.name if site is not None else None
        if site is None:
            result.disagreements.append(f"{call.place} applied Sparseout but is not a site of the report")
    for site in report.sparseout_sites:
        if site.kind == "inserted":
            continue  # new sites: the probe does not count them
        calls = seen[site.module].calls if site.module in seen else 0
        if calls == 0 and site.kind == "attention" and site.new_p == 0:
            continue  # an identity attention site: SDPA with dropout_p = 0 never calls it, nothing to apply
        if calls != site.calls:
            result.disagreements.append(f"site {site.name}: report says {site.calls} calls, saw {calls}")
    _mark_kept(result, report)
    # One site can be read by several modules (a config value read by every layer): compare source lines.
    lines = {line for call in result.calls if call.reached_as != "sparseout" for line in call.lines}
    if len(lines) > len(report.plain_sites):
        result.disagreements.append(
            f"{len(lines)} source lines apply plain dropout but the report lists {len(report.plain_sites)} plain sites"
        )


KEPT_REASON = "attention='keep'"


def _mark_kept(result: VerifyReport, report: Any) -> None:
    """Plain calls made by the module owning an attention site the report keeps plain become ``kept``.

    A kept site is a dropout module (``<owner>.dropout``, applied inside ``<owner>``) or a float
    attribute of its owner (``<owner>.attention_dropout`` passed to ``F.dropout`` or SDPA in
    ``<owner>``'s forward) with the site's probability; the plain call's place is ``<module>:<function>``.
    Plain dropout anywhere else (an excluded site, one hf-sparseout cannot redirect) stays uncovered.
    """
    kept: dict[str, tuple[str, float]] = {}
    for site in report.plain_sites:
        if site.kind == "attention" and site.reason == KEPT_REASON:
            kept.setdefault(site.name, (site.name, site.p))
            kept.setdefault(site.name.rpartition(".")[0], (site.name, site.p))
    for call in result.uncovered:
        name, p = kept.get(call.place.rpartition(":")[0], (None, None))
        if name is not None and math.isclose(call.p, p, rel_tol=1e-6):  # the kept site's own probability
            call.reached_as, call.site = "kept", name
