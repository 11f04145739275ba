"""Named placements for ``SparseoutConfig(insert=...)``: ``insert="mlp"`` puts a site on the hidden units.

The paper's "activation sparsity" is about the hidden units of the feed-forward block: the
output of its activation function. Each family names that module differently; ``"mlp"``
resolves, from ``model.config.model_type``, to the dotted suffix of the post-activation module
of every layer. In gated MLPs (Llama, Mistral, Qwen2, Gemma, ModernBERT) it is the activation of
the gate, before the product with the up projection. T5 and BART already apply dropout to these
units (``DenseReluDense.dropout``, ``activation_dropout``), which the default patch turns into
Sparseout; with ``insert="mlp"`` they get a second site there unless that one is excluded.
"""

from __future__ import annotations

from torch import nn

MLP_PRESET = "mlp"
"""The value of ``insert`` that selects the post-activation MLP module of a supported family."""

MLP_ACTIVATIONS: dict[str, str] = {
    "albert": "albert_layers.*.activation",
    "bart": "activation_fn",
    "bert": "intermediate.intermediate_act_fn",
    "bloom": "mlp.gelu_impl",
    "deberta-v2": "intermediate.intermediate_act_fn",
    "distilbert": "ffn.activation",
    "electra": "intermediate.intermediate_act_fn",
    "falcon": "mlp.act",
    "gemma": "mlp.act_fn",
    "gpt2": "mlp.act",
    "gpt_neox": "mlp.act",
    "gptj": "mlp.act",
    "llama": "mlp.act_fn",
    "mistral": "mlp.act_fn",
    "modernbert": "mlp.act",
    "opt": "activation_fn",
    "phi": "mlp.activation_fn",
    "qwen2": "mlp.act_fn",
    "roberta": "intermediate.intermediate_act_fn",
    "t5": "DenseReluDense.act",
}
"""``model_type`` -> dotted suffix of the module whose output is the MLP's hidden units (``*``: a layer index)."""


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type``, or ``None`` for a model without a transformers config."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def resolve_insert(model: nn.Module, insert: list[str] | str | None) -> list[str] | str | None:
    """``insert`` with the ``"mlp"`` preset replaced by the model family's pattern (a full-match regex).

    Raises:
        ValueError: ``insert="mlp"`` on a model whose family is not in :data:`MLP_ACTIVATIONS`
            (the message lists the supported families and how to name the module instead).
    """
    if insert != MLP_PRESET:
        return insert
    family = model_type(model)
    suffix = MLP_ACTIVATIONS.get(family or "")
    if suffix is None:
        raise ValueError(
            f"insert='mlp' does not know where the MLP hidden units of {type(model).__name__} "
            f"(model_type={family!r}) are; supported families: {', '.join(sorted(MLP_ACTIVATIONS))}. "
            "Name the post-activation module instead, e.g. insert=['mlp.act_fn'] (hf-sparseout inspect MODEL "
            "--insert nope lists the activation modules)"
        )
    return r"(.*\.)?" + suffix.replace(".", r"\.").replace("*", r"\d+")


__all__ = ["MLP_ACTIVATIONS", "MLP_PRESET", "model_type", "resolve_insert"]
