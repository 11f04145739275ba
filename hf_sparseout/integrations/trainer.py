"""``SparsityCallback``: activation sparsity in ``transformers.Trainer`` (and TRL) evaluation metrics."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from hf_sparseout.metrics.functions import DEFAULT_NEAR_ZERO_THRESHOLD
from hf_sparseout.metrics.monitor import METRICS, SparsityMonitor
from hf_sparseout.patcher.patterns import abbreviate

DEFAULT_METRICS: tuple[str, ...] = ("hoyer", "zero_fraction", "near_zero_fraction", "mean_abs")
"""Reported unless ``metrics=`` says otherwise (``l1_l2_ratio`` is Hoyer's measure before rescaling)."""


def _duplicate_free_mask(kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The ``(batch, seq)`` mask of this forward, with accelerate's padding samples zeroed.

    With several processes, accelerate repeats samples to fill the last global batch of an eval set
    (``even_batches``) and ``gather_for_metrics`` keeps the first ``remainder`` rows of the processes'
    batches in rank order; Trainer's ``eval_loss`` is gathered that way, so sparsity gets the same cut.
    """
    from accelerate.state import GradientState, PartialState

    mask = kwargs.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    state, partial = GradientState(), PartialState()
    if partial.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return mask
    ref = next((kwargs[k] for k in ("input_ids", "inputs_embeds") if isinstance(kwargs.get(k), torch.Tensor)), mask)
    if ref is None or ref.dim() < 2:
        return mask
    local = ref.shape[0]
    real = max(0, min(local, state.remainder - partial.process_index * local))
    out = mask.clone() if mask is not None else torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
    out[real:] = 0
    return out


def _in_eval_dataloader(model: nn.Module) -> bool:
    """An eval-mode forward while accelerate iterates a dataloader: Trainer's evaluation/prediction loop."""
    from accelerate.state import GradientState

    return not model.training and GradientState().in_dataloader


def _eval_prefix(logs: dict[str, Any]) -> str | None:
    """``eval`` (or ``eval_<name>``) when ``logs`` are the metrics of ``Trainer.evaluate``, else ``None``."""
    for key in logs:
        if key.endswith("_runtime") and key[: -len("_runtime")] + "_samples_per_second" in logs:
            prefix = key[: -len("_runtime")]
            if prefix != "train":
                return prefix
    return None


class SparsityCallback(TrainerCallback):
    """Activation sparsity of the eval set, added to every evaluation's metrics (Trainer, TRL trainers).

    At each ``Trainer.evaluate`` (``eval_strategy`` steps/epoch, or a direct call) a
    :class:`~hf_sparseout.SparsityMonitor` measures the activations entering the model's Sparseout
    sites (or the modules named by ``sites``) over the whole eval set, padding-aware (the batch's
    ``attention_mask``; accelerate's repeated samples on the last batch of several processes are
    excluded, as ``eval_loss`` excludes them) and summed across processes. The figures are added as
    ``{prefix}_sparsity_{metric}`` (token-weighted over the sites) and, with ``per_site``,
    ``{prefix}_sparsity_{metric}/{site}``, next to ``eval_loss``: in the dict ``evaluate()`` returns
    (so ``metric_for_best_model="eval_sparsity_hoyer"`` works), ``trainer.state.log_history``, the
    progress display and the ``report_to`` trackers.

    Where it acts, and why: Trainer calls ``self.log(metrics)`` *before* ``on_evaluate``, so a callback
    that adds metrics in ``on_evaluate`` reaches neither the history nor the trackers. Measuring is done
    by forward hooks that count only eval-mode forwards made while accelerate iterates a dataloader
    (Trainer's evaluation loop; training steps, ``generate`` calls and other callbacks' forwards are not
    counted); the figures are computed and added in ``on_log`` of the evaluation's log call, updating
    that call's ``logs`` (the same dict ``evaluate()`` returns) and the ``log_history`` entry already
    written. Callbacks run in list order and Trainer puts the ``report_to`` callbacks *before* those
    passed as ``callbacks=``; :meth:`attach` puts this one first so the trackers get the figures
    (``callbacks=[SparsityCallback()]`` gives history, progress display and return value only, and
    warns when trackers are configured).

    Training is not changed: hooks are removed outside evaluation forwards, nothing is drawn from any
    random generator, and eval forwards are only observed.

    Args:
        sites: module names or patterns to measure (``SparsityMonitor``'s ``sites``); ``None``: every
            Sparseout site. A pattern matching no module raises ``ValueError``.
        metrics: which of ``hoyer``, ``l1_l2_ratio``, ``zero_fraction``, ``near_zero_fraction``,
            ``mean_abs`` to report.
        per_site: also report each site's figures (sites not run in eval, e.g. attention
            probabilities, are left out); ``False``: the overall figures only.
        near_zero_threshold: ``|a|`` at or below it counts as near zero.

    Example:
        >>> trainer = Trainer(model=patched, args=args, train_dataset=train, eval_dataset=val)  # doctest: +SKIP
        >>> SparsityCallback.attach(trainer, per_site=False)  # doctest: +SKIP
        >>> trainer.evaluate()["eval_sparsity_hoyer"]  # doctest: +SKIP
    """

    def __init__(
        self,
        sites: str | Sequence[str] | None = None,
        *,
        metrics: Sequence[str] = DEFAULT_METRICS,
        per_site: bool = True,
        near_zero_threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD,
    ) -> None:
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"metrics must be a non-empty subset of {list(METRICS)}, got {metrics!r}")
        self.sites = sites
        self.metrics = tuple(metrics)
        self.per_site = per_site
        self.near_zero_threshold = near_zero_threshold
        self.monitor: SparsityMonitor | None = None
        self._model: nn.Module | None = None
        self._handles: list[Any] = []
        self._attached = False
        self._incomplete = False
        self._forwards = 0
        """Forwards measured since the last reset (eval mode, inside an accelerate dataloader), this process."""
        self._warned: set[str] = set()

    # -- setup -----------------------------------------------------------------------------------

    @classmethod
    def attach(cls, trainer: Any, *args: Any, **kwargs: Any) -> SparsityCallback:
        """Build a callback, install it on ``trainer.model`` and put it first in the trainer's callbacks.

        First, so that the ``report_to`` trackers (which Trainer places before user callbacks) log
        the figures too. Arguments are those of the constructor; returns the callback.
        """
        callback = cls(*args, **kwargs)
        callback.install(trainer.model)
        trainer.callback_handler.callbacks.insert(0, callback)
        callback._attached = True
        return callback

    def install(self, model: nn.Module) -> None:
        """Hook ``model`` (patched before the Trainer is built); idempotent. Raises if ``sites`` match nothing."""
        if self._model is model:
            return
        self.remove()
        self.monitor = SparsityMonitor(
            model, self.sites, near_zero_threshold=self.near_zero_threshold, mode="eval", auto_mask=False
        )
        self._model = model
        self._handles = [
            model.register_forward_pre_hook(self._root_pre, with_kwargs=True),
            model.register_forward_hook(self._root_post, always_call=True),
        ]

    def remove(self) -> None:
        """Remove every hook from the model (the callback measures nothing until installed again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.monitor is not None:
            self.monitor.stop()
        self._model = None

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        assert self.monitor is not None
        if _in_eval_dataloader(module):
            self._forwards += 1
            self.monitor.set_attention_mask(_duplicate_free_mask(kwargs))
            self.monitor.start()
        else:
            self.monitor.stop()

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor.set_attention_mask(None)

    # -- Trainer events --------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            self.install(model)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        if model is not None:
            self.install(model)

    def on_prediction_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any):
        if self._model is None and model is not None:
            # Added with add_callback() after the Trainer was built, and evaluate() before any train():
            # the first batch ran unmeasured, so this evaluation is left out rather than reported wrong.
            self._warn_once(
                "late",
                "SparsityCallback was added after the Trainer was built and no training has run, so this "
                "evaluation's first batch was not measured and its sparsity is not reported; use "
                "SparsityCallback.attach(trainer) or Trainer(..., callbacks=[SparsityCallback()])",
            )
            self.install(model)
            self._incomplete = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        prefix = _eval_prefix(logs or {})
        if prefix is None or self.monitor is None:
            return
        figures = self._figures(prefix)
        self.monitor.reset()
        self._forwards = 0
        if not figures:
            return
        logs.update(figures)
        # Trainer.log appended {**logs, "step": ...} to the history before calling on_log.
        if state.log_history and set(logs) - set(figures) <= set(state.log_history[-1]):
            state.log_history[-1].update(figures)
        trackers = [t for t in (getattr(args, "report_to", None) or []) if t != "none"]
        if trackers and not self._attached:
            self._warn_once(
                "order",
                f"SparsityCallback was passed in callbacks=[...], after the report_to trackers {trackers}: they "
                "log the evaluation without the sparsity figures; use SparsityCallback.attach(trainer) instead",
            )

    def on_predict(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # predict() runs the same loop but logs nothing: its forwards must not count in the next evaluation.
        if self.monitor is not None:
            self.monitor.reset()
        self._forwards = 0
        self._incomplete = False

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.reset()
        self._forwards = 0

    # -- figures ---------------------------------------------------------------------------------

    def _figures(self, prefix: str) -> dict[str, float]:
        """The monitor's sums over this evaluation, all-reduced (every process calls ``log``), as metrics."""
        assert self.monitor is not None
        result = self.monitor.compute(sync=True)
        if self._incomplete:
            self._incomplete = False
            return {}
        if not result["overall"]["tokens"] > 0:
            self._warn_once("empty", self._nothing_measured())
            return {}
        figures = {f"{prefix}_sparsity_{m}": result["overall"][m] for m in self.metrics}
        if self.per_site:
            for site, values in result["sites"].items():
                if values["vectors"] > 0:
                    figures.update({f"{prefix}_sparsity_{m}/{site}": values[m] for m in self.metrics})
        return figures

    def _nothing_measured(self) -> str:
        """What happened when an evaluation gave no figures: no forward was measured, or no site was called."""
        assert self.monitor is not None
        sites = abbreviate(self.monitor.site_names, 6)
        if self._forwards == 0:
            return (
                "SparsityCallback saw no forward during this evaluation: the model was not called in eval mode while "
                "an accelerate dataloader was iterated (Trainer's evaluation loop), so there is nothing to report; an "
                "evaluation run outside Trainer.evaluate/its dataloader is not measured"
            )
        return (
            f"SparsityCallback measured {self._forwards} evaluation forward{'s' if self._forwards != 1 else ''} on "
            f"this process, but its sites ({sites}) were not called in them: these modules do not run in eval mode "
            "(dropout on attention probabilities is skipped in eval) or are not on the model's forward path; pass "
            "sites= with modules that run in eval (the default, every Sparseout site, includes them)"
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)
