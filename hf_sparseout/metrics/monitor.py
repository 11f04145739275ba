"""``SparsityMonitor``: streaming activation-sparsity statistics of a model's Sparseout sites."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from hf_sparseout.layers import Sparseout
from hf_sparseout.metrics import histogram
from hf_sparseout.metrics.functions import (
    DEFAULT_NEAR_ZERO_THRESHOLD,
    DEFAULT_RELATIVE_NEAR_ZERO,
    hoyer_from_ratio,
    ratio_from_norms,
)
from hf_sparseout.metrics.masking import weights_for
from hf_sparseout.patcher.patterns import abbreviate, name_matches

STATS: tuple[str, ...] = (
    "hoyer",
    "l1_l2_ratio",
    "nonzeros",
    "above",
    "l1",
    "relative_near",
    "elements",
    "vectors",
    "tokens",
)
"""The running float64 sums kept per site: per-vector ``hoyer`` and ``l1_l2_ratio``, counts of non-zero
elements and of elements above the near-zero threshold, ``l1``, the count of elements at or below
``relative_near_zero_ratio * rms`` of their vector, and the element, vector and token counts."""
_COUNTS = ("calls", "unmasked_calls")
METRICS: tuple[str, ...] = (
    "hoyer",
    "l1_l2_ratio",
    "zero_fraction",
    "near_zero_fraction",
    "relative_near_zero_fraction",
    "mean_abs",
)
_DROPOUT_LIKE = (Sparseout, nn.modules.dropout._DropoutNd)


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. gradient-checkpoint recomputation)."""
    graph_task_id = getattr(torch._C, "_current_graph_task_id", None)
    return graph_task_id is not None and graph_task_id() != -1


class SparsityMonitor:
    """Streaming activation-sparsity metrics at a model's Sparseout sites (or at named modules).

    What is measured:
        * ``sites=None``: the activations **entering** every :class:`~hf_sparseout.Sparseout`
          module of the (patched) model, i.e. before the noise (a forward pre-hook each).
        * ``sites=[patterns]``: every module whose name equals a pattern, ends with
          ``"." + pattern`` or fully matches it as a regex. Dropout-like modules (Sparseout,
          ``nn.Dropout`` and friends) are measured at their **input**, like the default, so an
          unpatched dropout baseline is measured at the same places; any other module at its
          **output** (the first tensor of a tuple output). A pattern matching nothing raises
          ``ValueError`` listing the module names.

    Every vector (last dimension = features) contributes its Hoyer measure and ``l1/l2`` ratio;
    zeros, near-zeros (``|a| <= near_zero_threshold``, absolute), relative near-zeros
    (``|a| <= relative_near_zero_ratio * rms(a)`` of the entry's own vector, scale-free) and
    ``|a|`` are pooled over elements.
    Only running float64 sums are kept, never activations: memory is constant in the number of
    batches (:meth:`state_nbytes`), and nothing synchronises with the device until :meth:`compute`.

    Padding: the batch's ``(batch, seq)`` attention mask is taken from the ``attention_mask``
    keyword of each call of the root ``model`` (``auto_mask=True``), unless one was set with
    :meth:`set_attention_mask`, which wins. Masked positions do not count; attention tensors
    ``(batch, heads, q_len, k_len)`` lose padded query rows and padded key columns (see
    :mod:`hf_sparseout.metrics.masking`). A tensor whose shape does not match the mask is
    measured unmasked, counted in ``unmasked_calls`` and warned about once per site.

    Activity: hooks exist only while the monitor is active (``with monitor:`` or between
    :meth:`start` and :meth:`stop`); sums survive stop/start until :meth:`reset`. With
    ``mode="any"`` (default) it measures in train and eval mode alike (``"train"``/``"eval"``
    restrict it, by the watched module's ``training`` flag). In eval mode the model does not apply
    attention-probability dropout at all (it passes ``dropout=0``), so those sites are only seen
    in training mode; module and functional sites are seen in both. Recomputation during backward
    (gradient checkpointing) is not counted twice.

    Example:
        >>> with SparsityMonitor(model) as monitor:  # doctest: +SKIP
        ...     for batch in loader:
        ...         model(**batch)
        >>> monitor.compute()["overall"]["hoyer"]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        sites: str | Sequence[str] | None = None,
        *,
        near_zero_threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD,
        relative_near_zero_ratio: float = DEFAULT_RELATIVE_NEAR_ZERO,
        mode: Literal["any", "train", "eval"] = "any",
        auto_mask: bool = True,
        histogram_sites: bool | str | Sequence[str] | None = None,
        histogram_bins: int = histogram.DEFAULT_BINS,
        histogram_range: tuple[float, float] = histogram.DEFAULT_RANGE,
    ) -> None:
        if mode not in ("any", "train", "eval"):
            raise ValueError(f"mode must be 'any', 'train' or 'eval', got {mode!r}")
        if not near_zero_threshold >= 0:
            raise ValueError(f"near_zero_threshold must be >= 0, got {near_zero_threshold!r}")
        if not 0 <= relative_near_zero_ratio < float("inf"):
            raise ValueError(f"relative_near_zero_ratio must be a finite number >= 0, got {relative_near_zero_ratio!r}")
        self.model = model
        self.mode = mode
        self.auto_mask = auto_mask
        self.near_zero_threshold = float(near_zero_threshold)
        self.relative_near_zero_ratio = float(relative_near_zero_ratio)
        self._modules: dict[str, nn.Module] = self._select(model, sites)
        self.site_names: list[str] = list(self._modules)
        hist_names = self._select_hist(histogram_sites)
        histogram.check_range(histogram_bins, histogram_range)
        self.histogram_bins, self.histogram_range = histogram_bins, tuple(histogram_range)
        self._hist_index = {name: i for i, name in enumerate(hist_names)}
        self._state: torch.Tensor | None = None
        self._hist: torch.Tensor | None = None
        self._counts = [[0, 0] for _ in self.site_names]
        self._warned: set[str] = set()
        self._handles: list[Any] = []
        self._manual_mask: torch.Tensor | None = None
        self._auto: torch.Tensor | None = None
        self._mask_cache: dict[torch.device, torch.Tensor] = {}

    # -- selection ---------------------------------------------------------------------------

    @staticmethod
    def _select(model: nn.Module, sites: str | Sequence[str] | None) -> dict[str, nn.Module]:
        named = [(n, m) for n, m in model.named_modules() if n]
        if sites is None:
            found = {n: m for n, m in named if isinstance(m, Sparseout)}
            if not found:
                raise ValueError(
                    f"{type(model).__name__} has no Sparseout sites: patch it first (hf_sparseout.patch) "
                    "or pass sites=[module names or patterns] to measure other modules"
                )
            return found
        patterns = [sites] if isinstance(sites, str) else list(sites)
        if not patterns:
            raise ValueError("sites must name at least one module (or be None for every Sparseout site)")
        missing = [p for p in patterns if not any(name_matches(p, n) for n, _ in named)]
        if missing:
            raise ValueError(
                f"sites pattern(s) {missing} match no module of {type(model).__name__}; "
                f"modules: {abbreviate([n for n, _ in named])}"
            )
        return {n: m for n, m in named if any(name_matches(p, n) for p in patterns)}

    def _select_hist(self, spec: bool | str | Sequence[str] | None) -> list[str]:
        if spec is None or spec is False:
            return []
        if spec is True:
            return list(self.site_names)
        patterns = [spec] if isinstance(spec, str) else list(spec)
        missing = [p for p in patterns if not any(name_matches(p, n) for n in self.site_names)]
        if missing:
            raise ValueError(
                f"histogram_sites pattern(s) {missing} match no watched site; sites: {abbreviate(self.site_names)}"
            )
        return [n for n in self.site_names if any(name_matches(p, n) for p in patterns)]

    # -- activity ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether hooks are installed (inside ``with`` or between :meth:`start` and :meth:`stop`)."""
        return bool(self._handles)

    def start(self) -> SparsityMonitor:
        """Install the hooks; measuring starts (sums accumulated so far are kept)."""
        if self.active:
            return self
        if self.auto_mask:
            self._handles.append(self.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._root_post, always_call=True))
        for index, (name, module) in enumerate(self._modules.items()):
            if isinstance(module, _DROPOUT_LIKE):
                hook = self._pre_hook(index, name)
                self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                self._handles.append(module.register_forward_hook(self._post_hook(index, name)))
        return self

    def stop(self) -> None:
        """Remove the hooks; measuring stops until the next :meth:`start`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._auto = None
        self._mask_cache.clear()

    def __enter__(self) -> SparsityMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- masks -------------------------------------------------------------------------------

    def set_attention_mask(self, mask: torch.Tensor | None) -> None:
        """Use this ``(batch, seq)`` mask (non-zero = real token) for the following forwards; ``None`` clears it.

        It takes precedence over the mask read from the model's ``attention_mask`` argument.
        """
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2):
            raise ValueError(f"attention mask must be a (batch, seq) tensor, got {getattr(mask, 'shape', mask)!r}")
        self._manual_mask = mask
        self._mask_cache.clear()

    def _root_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._auto = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        self._mask_cache.clear()

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._auto = None
        self._mask_cache.clear()

    def _mask_on(self, device: torch.device) -> torch.Tensor | None:
        mask = self._manual_mask if self._manual_mask is not None else self._auto
        if mask is None:
            return None
        cached = self._mask_cache.get(device)
        if cached is None:
            cached = self._mask_cache[device] = (mask.detach().to(device) != 0).to(torch.float32)
        return cached

    # -- measuring ---------------------------------------------------------------------------

    def _pre_hook(self, index: int, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input")
            self._measure(index, name, module, x)

        return hook

    def _post_hook(self, index: int, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = output[0] if isinstance(output, (tuple, list)) and output else output
            self._measure(index, name, module, x)

        return hook

    def _measure(self, index: int, name: str, module: nn.Module, x: Any) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or x.numel() == 0:
            return
        if (self.mode == "train" and not module.training) or (self.mode == "eval" and module.training):
            return
        if _in_backward():
            return
        mask = self._mask_on(x.device)
        w = weights_for(x, mask)
        if not w.matched and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"SparsityMonitor: {name} got a tensor of shape {tuple(x.shape)} that does not match the attention "
                f"mask {tuple(mask.shape)}; it is measured unmasked (counted in unmasked_calls)",
                stacklevel=2,
            )
        state = self._state_on(x.device)
        with torch.no_grad():
            # One fresh float32/float64 tensor of magnitudes; padded key columns zeroed in place.
            a = x.detach().abs() if x.dtype in (torch.float32, torch.float64) else x.detach().float().abs_()
            if w.cols is not None:
                a.mul_(w.cols)
            l1 = a.sum(-1)
            l2 = torch.linalg.vector_norm(a, dim=-1)
            if name in self._hist_index:
                self._add_histogram(self._hist_index[name], a, w)
            # Counting through sign() of non-negative floats is several times faster on CPU than
            # reducing bool tensors; masked columns are 0 and never count as non-zero or above.
            nonzeros = a.sign().sum(-1)
            # |a| <= ratio * rms(a) with rms over the vector's real features; padded key columns
            # (zeroed above) always pass, so they are taken off again.
            if isinstance(w.n, int):
                threshold = l2 * (self.relative_near_zero_ratio / w.n**0.5)
            else:
                threshold = l2 * self.relative_near_zero_ratio / w.n.to(l2.dtype).sqrt()
            relative = (a <= threshold.unsqueeze(-1)).sum(-1, dtype=a.dtype)
            if w.cols is not None:
                relative = relative - (x.shape[-1] - w.n.to(a.dtype))
            above = a.sub_(self.near_zero_threshold).clamp_(min=0).sign_().sum(-1)  # a is ours: reuse it
            ratio = ratio_from_norms(l1, l2)
            per_vector = [hoyer_from_ratio(ratio, w.n), ratio, nonzeros, above, l1, relative]
            if not isinstance(w.n, int):
                per_vector.append(w.n.to(l1.dtype).expand_as(l1))
            per = torch.stack(per_vector, -1).reshape(-1, len(per_vector)).double()
            if w.rows is not None:
                weights = w.rows.expand(l1.shape).reshape(1, -1).double()
                sums = torch.cat([(weights @ per).reshape(-1), weights.sum(-1)])
            else:
                sums = torch.cat([per.sum(0), per.new_full((1,), per.shape[0])])
            vectors = sums[-1:]
            elements = vectors * w.n if isinstance(w.n, int) else sums[6:7]
            sums = torch.cat([sums[:6], elements, vectors, vectors / w.group])
            state[index].add_(sums)
            self._counts[index][0] += 1
            self._counts[index][1] += int(not w.matched)

    def _add_histogram(self, hist_index: int, a: torch.Tensor, w: Any) -> None:
        idx = histogram.bin_index(a, self.histogram_bins, self.histogram_range)
        dump = self.histogram_bins + 3  # masked-out elements land in a last, discarded bin
        if w.rows is not None:
            idx.masked_fill_(w.rows.unsqueeze(-1) == 0, dump)
        if w.cols is not None:
            idx.masked_fill_(w.cols == 0, dump)
        assert self._hist is not None
        ones = torch.ones(1, dtype=self._hist.dtype, device=idx.device).expand(idx.numel())
        self._hist[hist_index].index_add_(0, idx.reshape(-1), ones)

    def _state_on(self, device: torch.device) -> torch.Tensor:
        if self._state is None:
            self._state = torch.zeros(len(self.site_names), len(STATS), dtype=torch.float64, device=device)
            nbins = self.histogram_bins + 4
            self._hist = torch.zeros(len(self._hist_index), nbins, dtype=torch.float64, device=device)
        elif self._state.device != device:
            raise RuntimeError(f"SparsityMonitor: sites on several devices ({self._state.device}, {device})")
        return self._state

    # -- results -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything measured so far (hooks stay as they are)."""
        if self._state is not None:
            self._state.zero_()
            self._hist.zero_()
        self._counts = [[0, 0] for _ in self.site_names]

    def state_nbytes(self) -> int:
        """Bytes held by the running sums and histograms (constant once the first batch is seen)."""
        tensors = [t for t in (self._state, self._hist) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors) + 16 * len(self._counts)

    def _reduced(self, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        device = self._state.device if self._state is not None else torch.device("cpu")
        state = self._state if self._state is not None else torch.zeros(len(self.site_names), len(STATS))
        nbins = self.histogram_bins + 3
        hist = self._hist[:, :nbins] if self._hist is not None else torch.zeros(len(self._hist_index), nbins)
        counts = torch.tensor(self._counts, dtype=torch.float64).reshape(len(self.site_names), len(_COUNTS))
        flat = torch.cat([state.double().reshape(-1).cpu(), hist.double().reshape(-1).cpu(), counts.reshape(-1)])
        dist = torch.distributed
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            on = device if dist.get_backend() != "gloo" else torch.device("cpu")
            flat = flat.to(on)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat = flat.cpu()
        n_state, n_hist = state.numel(), hist.numel()
        full = torch.cat([flat[:n_state].reshape(state.shape), flat[n_state + n_hist :].reshape(counts.shape)], 1)
        return full, flat[n_state : n_state + n_hist].reshape(hist.shape)

    def compute(self, sync: bool = True) -> dict[str, Any]:
        """Per-site metrics, a token-weighted overall value and the histograms, as plain Python numbers.

        Per site: ``hoyer`` and ``l1_l2_ratio`` are means over vectors; ``zero_fraction``,
        ``near_zero_fraction``, ``relative_near_zero_fraction`` and ``mean_abs`` are pooled over
        elements; plus ``vectors``, ``tokens``, ``elements``, ``calls`` and ``unmasked_calls``.
        ``overall`` averages the sites' metrics weighted by their ``tokens`` (a token counts once
        per site, whatever its heads).
        Sites that saw nothing have NaN metrics and weight 0.

        With ``torch.distributed`` initialised (e.g. under ``accelerate launch``) and ``sync``,
        the sums are all-reduced first, so every process gets the result over all the data:
        call it on every process.
        """
        state, hist = self._reduced(sync)
        columns = {name: state[:, i] for i, name in enumerate(STATS + _COUNTS)}
        vectors, elements = columns["vectors"], columns["elements"]
        safe_v, safe_e = vectors.clamp_min(1), elements.clamp_min(1)
        values = {
            "hoyer": columns["hoyer"] / safe_v,
            "l1_l2_ratio": columns["l1_l2_ratio"] / safe_v,
            "zero_fraction": (elements - columns["nonzeros"]) / safe_e,
            "near_zero_fraction": (elements - columns["above"]) / safe_e,
            "relative_near_zero_fraction": columns["relative_near"] / safe_e,
            "mean_abs": columns["l1"] / safe_e,
        }
        empty = vectors == 0
        values = {k: torch.where(empty, torch.full_like(v, float("nan")), v) for k, v in values.items()}
        sites: dict[str, dict[str, float]] = {}
        for i, name in enumerate(self.site_names):
            site = {k: float(v[i]) for k, v in values.items()}
            site.update({k: round(float(columns[k][i])) for k in ("vectors", "elements", "calls", "unmasked_calls")})
            site["tokens"] = float(columns["tokens"][i])
            sites[name] = site
        tokens = columns["tokens"]
        total = float(tokens.sum())
        overall: dict[str, float] = {
            k: (float((torch.nan_to_num(v) * tokens).sum()) / total if total > 0 else float("nan"))
            for k, v in values.items()
        }
        overall["tokens"] = total
        hist_edges = histogram.edges(self.histogram_bins, self.histogram_range).tolist()
        histograms = {name: {"edges": hist_edges, "counts": hist[i].tolist()} for name, i in self._hist_index.items()}
        return {
            "sites": sites,
            "overall": overall,
            "histograms": histograms,
            "near_zero_threshold": self.near_zero_threshold,
            "relative_near_zero_ratio": self.relative_near_zero_ratio,
        }
