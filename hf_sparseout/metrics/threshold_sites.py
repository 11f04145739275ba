"""Which activations magnitude thresholding zeros: the inputs of a model's weight matrices.

A *site* is a module whose **input** is thresholded (a forward pre-hook). The default sites are,
per architecture family (by ``config.model_type``), the weight matrices reading

* ``attn_in``: the attention input projections (query/key/value),
* ``mlp_in``: the MLP input projections (up, and gate where there is one),
* ``mlp_down``: the MLP down-projection,

and, with ``sites="teal"``, also ``attn_out`` (the attention output projection), which makes the
set TEAL's (every weight matrix of the attention and MLP blocks; embeddings and LM head excluded).
``sites="sparseout"`` picks the Sparseout modules of a patched model (their input, i.e. the
activations at the dropout sites); a list of names, dotted suffixes or regexes (plain, or
``"re:<regex>"`` as on the command line) picks any modules.
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
"""Roles thresholded by default (``sites=None``); ``sites="teal"`` uses all of :data:`ROLES`."""

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
"""Regexes (full match on module names) per family and role."""

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

    Raises:
        ThresholdError: an unknown family with default sites, a pattern that matches nothing,
            ``"sparseout"`` on an unpatched model, or an empty list.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if sites is None or sites == "teal":
        family = family_of(model)
        if family is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            raise ThresholdError(
                f"no default threshold sites for model_type {model_type!r} ({type(model).__name__})",
                f"pass sites=[module names or regexes] (--sparsity-sites); families with defaults: "
                f"{sorted(MODEL_TYPES)}; modules: {abbreviate([n for n, _ in named])}",
            )
        roles = ROLES if sites == "teal" else DEFAULT_ROLES
        patterns = [FAMILIES[family][role] for role in roles]
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
                f"threshold sites must be None, 'teal', 'sparseout', a pattern or a list of patterns, got {sites!r}",
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
