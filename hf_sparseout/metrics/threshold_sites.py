"""Which activations magnitude thresholding zeros: the inputs of a model's weight matrices.

A *site* is a module whose **input** is thresholded (a forward pre-hook). Named site sets:

* ``"teal"`` (the default, ``sites=None``): TEAL's set, every weight matrix inside the transformer
  blocks (every ``nn.Linear`` and transformers ``Conv1D`` inside a module whose class is one of the
  model's ``_no_split_modules``, or, for models that name none, inside the elements of its layer
  lists): attention query/key/value and output projections, MLP up/gate/down, for any family;
  embeddings, pooler, classifier and LM head lie outside the blocks and are excluded.
* ``"family"`` (the default before TEAL's set): per architecture family (by ``config.model_type``),
  the weight matrices reading ``attn_in`` (attention query/key/value), ``mlp_in`` (MLP up, and gate)
  and ``mlp_down`` (MLP down-projection), leaving out ``attn_out`` (the attention output projection).
* ``"sparseout"``: the Sparseout modules of a patched model (their input, i.e. the activations at the
  dropout sites).

Anything else is a list of names, dotted suffixes or full-match regexes (plain, or ``"re:<regex>"``
as on the command line) picking any modules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from hf_sparseout.errors import HfSparseoutError
from hf_sparseout.layers import Sparseout
from hf_sparseout.patcher.patterns import abbreviate, name_matches

ROLES: tuple[str, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_down")
DEFAULT_ROLES: tuple[str, ...] = ("attn_in", "mlp_in", "mlp_down")
"""Roles of ``sites="family"`` (the default before ``"teal"``): every role but the attention output."""
NAMED_SETS: tuple[str, ...] = ("teal", "family", "sparseout")
"""Site sets chosen by name (``--sparsity-sites teal``); ``"teal"`` is the default."""

_BERT = {
    "attn_in": r".*attention\.self\.(query|key|value)",
    "attn_out": r".*attention\.output\.dense",
    "mlp_in": r".*intermediate\.dense",
    "mlp_down": r".*layer\.\d+\.output\.dense",
}
_LLAMA = {
    "attn_in": r".*self_attn\.(q|k|v)_proj",
    "attn_out": r".*self_attn\.o_proj",
    "mlp_in": r".*mlp\.(gate|up)_proj",
    "mlp_down": r".*mlp\.down_proj",
}
FAMILIES: dict[str, dict[str, str]] = {
    # GPT-2: transformers' Conv1D layers (weight stored transposed); fused q/k/v in c_attn.
    "gpt2": {
        "attn_in": r".*attn\.c_attn",
        "attn_out": r".*attn\.c_proj",
        "mlp_in": r".*mlp\.c_fc",
        "mlp_down": r".*mlp\.c_proj",
    },
    "bert": _BERT,
    "llama": _LLAMA,
    "opt": {
        "attn_in": r".*self_attn\.(q|k|v)_proj",
        "attn_out": r".*self_attn\.out_proj",
        "mlp_in": r".*layers\.\d+\.fc1",
        "mlp_down": r".*layers\.\d+\.fc2",
    },
    "distilbert": {
        "attn_in": r".*attention\.(q|k|v)_lin",
        "attn_out": r".*attention\.out_lin",
        "mlp_in": r".*ffn\.lin1",
        "mlp_down": r".*ffn\.lin2",
    },
    "gpt_neox": {
        "attn_in": r".*attention\.query_key_value",
        "attn_out": r".*attention\.dense",
        "mlp_in": r".*mlp\.dense_h_to_4h",
        "mlp_down": r".*mlp\.dense_4h_to_h",
    },
}
"""Regexes (full match on module names) per family and role (``sites="family"``)."""

MODEL_TYPES: dict[str, str] = {
    "gpt2": "gpt2",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "opt": "opt",
    "distilbert": "distilbert",
    "gpt_neox": "gpt_neox",
}
"""``config.model_type`` -> family in :data:`FAMILIES`."""


class ThresholdError(HfSparseoutError, ValueError):
    """Bad input to magnitude thresholding: ``message`` says what is wrong, ``hint`` what to do (CLI: exit 2)."""


def family_of(model: nn.Module) -> str | None:
    """The architecture family of ``model`` (from ``config.model_type``), or ``None`` if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None


def _weight_matrix_types() -> tuple[type, ...]:
    """``nn.Linear``, and transformers' ``Conv1D`` (GPT-2's, weight stored transposed) when importable."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def blocks_of(model: nn.Module) -> list[str]:
    """Names of the transformer blocks of ``model``, outermost only, in model order.

    The modules whose class is one of ``model._no_split_modules`` (transformers' own list of the
    blocks it never splits across devices), or, where the model names none (DistilBERT), the
    elements of every ``nn.ModuleList`` whose elements share one class.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    classes = set(getattr(model, "_no_split_modules", None) or ())
    found = [n for n, m in named if type(m).__name__ in classes]
    if not found:
        lists = [(n, m) for n, m in named if isinstance(m, nn.ModuleList) and len(m) > 0]
        found = [f"{n}.{i}" for n, m in lists if len({type(x) for x in m}) == 1 for i in range(len(m))]
    outer: list[str] = []
    for name in found:
        if not any(name.startswith(o + ".") for o in outer):
            outer.append(name)
    return outer


def teal_sites(model: nn.Module) -> dict[str, nn.Module]:
    """TEAL's sites: every weight matrix (``nn.Linear``, ``Conv1D``) inside the blocks (:func:`blocks_of`).

    Raises:
        ThresholdError: the model has no blocks, or no weight matrix inside them.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    blocks = blocks_of(model)
    kinds = _weight_matrix_types()
    found = {n: m for n, m in named if isinstance(m, kinds) and any(n.startswith(b + ".") for b in blocks)}
    if not found:
        raise ThresholdError(
            f"no transformer blocks with weight matrices found in {type(model).__name__} "
            "(no _no_split_modules and no list of layers): no default threshold sites",
            f"pass sites=[module names or regexes] (--sparsity-sites); modules: {abbreviate([n for n, _ in named])}",
        )
    return found


def _pattern(pattern: object) -> str:
    """A module name, dotted suffix or regex; ``"re:<regex>"`` (as on the command line) is the regex, checked."""
    if not isinstance(pattern, str) or not pattern:
        raise ThresholdError(
            f"threshold site patterns must be non-empty strings, got {pattern!r}",
            "pass module names, dotted suffixes or regexes (optionally as 're:<regex>')",
        )
    if not pattern.startswith("re:"):
        return pattern
    try:
        re.compile(pattern[3:])
    except re.error as err:
        raise ThresholdError(
            f"threshold sites {pattern!r} is not a valid regex: {err}", "fix the regular expression after 're:'"
        ) from err
    return pattern[3:]


def select_sites(model: nn.Module, sites: str | Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The modules whose input is thresholded, by name, in model order (see the module docstring).

    ``None`` or ``"teal"``: every weight matrix of the blocks; ``"family"``: the family's attention
    input, MLP input and down projections; ``"sparseout"``: the Sparseout modules; else patterns.

    Raises:
        ThresholdError: no blocks (``"teal"``), an unknown family (``"family"``), a pattern that
            matches nothing, ``"sparseout"`` on an unpatched model, or an empty list.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if sites is None or sites == "teal":
        return teal_sites(model)
    if sites == "family":
        family = family_of(model)
        if family is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise ThresholdError(
                f"no 'family' threshold sites for model_type {model_type!r} ({type(model).__name__})",
                f"use sites='teal' (any model with transformer blocks), or pass sites=[module names or regexes] "
                f"(--sparsity-sites); families with 'family' sites: {sorted(MODEL_TYPES)}; "
                f"modules: {abbreviate([n for n, _ in named])}",
            )
        patterns = [FAMILIES[family][role] for role in DEFAULT_ROLES]
    elif sites == "sparseout":
        found = {n: m for n, m in named if isinstance(m, Sparseout)}
        if not found:
            raise ThresholdError(
                f"sites='sparseout' but {type(model).__name__} has no Sparseout modules",
                "patch the model first (hf_sparseout.patch), or use the default sites (sites=None)",
            )
        return found
    else:
        if not isinstance(sites, (str, list, tuple)):
            raise ThresholdError(
                "threshold sites must be None, 'teal', 'family', 'sparseout', a pattern or a list of patterns, "
                f"got {sites!r}",
                "e.g. sites=['mlp.c_fc', 'attn.c_attn'] or sites='re:.*mlp.*'",
            )
        patterns = [_pattern(p) for p in ([sites] if isinstance(sites, str) else list(sites))]
        if not patterns:
            raise ThresholdError("sites is an empty list", "name at least one module, or pass sites=None")
    missing = [p for p in patterns if not any(name_matches(p, n) for n, _ in named)]
    if missing:
        raise ThresholdError(
            f"threshold site pattern(s) {missing} match no module of {type(model).__name__}",
            f"use module names, dotted suffixes or full-match regexes; modules: {abbreviate([n for n, _ in named])}",
        )
    return {n: m for n, m in named if any(name_matches(p, n) for p in patterns)}


def weight_numel(module: nn.Module) -> int | None:
    """Parameters of the weight matrix reading the site's input (``None`` if the module has no 2-d weight)."""
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if isinstance(weight, nn.Parameter) and weight.dim() == 2 else None
