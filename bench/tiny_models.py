"""Tiny random models of any transformers text model type, for the patcher's coverage report and tests.

:func:`tiny_config` takes a type's default config and shrinks every size it knows (hidden sizes,
layers, heads, vocabulary, experts) in the config and its sub-configs, and sets every float
dropout probability (a config attribute with "drop" in its name, LayerDrop excepted: it keeps its
default) to :data:`P`. :func:`build` instantiates the first head the type has among
:data:`HEAD_ORDER`. Nothing is downloaded.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import modeling_auto

P = 0.2
SEQ_LEN = 8
HEAD_ORDER = ("causal-lm", "seq2seq", "masked-lm", "seq-cls")
HEAD_MAPPINGS = {
    "causal-lm": ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    "seq2seq": ("AutoModelForSeq2SeqLM", modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
    "masked-lm": ("AutoModelForMaskedLM", modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
    "seq-cls": ("AutoModelForSequenceClassification", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
}
_SIZES = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "word_embed_proj_dim", "embedding_size"), 32),
    **dict.fromkeys(("dim", "hidden_size_global"), 32),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "d_ff", "n_inner"), 64),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "hidden_dim"), 64),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers"), 2),
    **dict.fromkeys(("decoder_layers", "num_decoder_layers", "num_encoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads"), 2),
    **dict.fromkeys(("encoder_attention_heads", "decoder_attention_heads"), 2),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads"), 1),
    **dict.fromkeys(("head_dim", "d_kv", "attention_head_dim"), 16),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "num_experts_per_token", "top_k", "moe_topk"), 2),
    **dict.fromkeys(("encoder_hash_byte_group_vocab",), 512),  # BLT: 500002 hash embeddings by default
    **dict.fromkeys(("rotary_dim",), 8),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "kv_lora_rank", "q_lora_rank"), 16),
    **dict.fromkeys(("v_head_dim",), 16),
}


def text_model_types() -> list[str]:
    """Every model type that has at least one of the text heads, sorted."""
    return sorted({t for _, mapping in HEAD_MAPPINGS.values() for t in mapping})


def heads_of(model_type: str) -> list[str]:
    """The heads of :data:`HEAD_ORDER` that ``model_type`` has."""
    return [h for h in HEAD_ORDER if model_type in HEAD_MAPPINGS[h][1]]


def _token_ids(config: PretrainedConfig) -> list[int]:
    return [
        v
        for k, v in vars(config).items()
        if (k.endswith("_token_id") or k.endswith("_token_index")) and isinstance(v, int) and not isinstance(v, bool)
    ]


def _shrink(config: PretrainedConfig, seen: set[int]) -> None:
    if id(config) in seen:
        return
    seen.add(id(config))
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _shrink(value, seen)
        elif key in _SIZES and isinstance(value, int) and not isinstance(value, bool) and value > _SIZES[key]:
            setattr(config, key, _SIZES[key])
        elif "drop" in key.lower() and "layerdrop" not in key.lower() and type(value) is float:
            setattr(config, key, P)
    if isinstance(getattr(config, "vocab_size", None), int):
        config.vocab_size = min(config.vocab_size, max(256, *(i + 1 for i in _token_ids(config)), 0))


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """``model_type``'s default config, shrunk, every dropout probability set to :data:`P`."""
    config = AutoConfig.for_model(model_type)
    _shrink(config, set())
    for key, value in overrides.items():
        setattr(config, key, value)
    try:  # rebuilt from its dict, so values derived in __init__ follow the new sizes (BLT's projections)
        return type(config).from_dict(config.to_dict())
    except Exception:
        return config


def build(model_type: str, head: str, attn_implementation: str = "eager", seed: int = 0) -> torch.nn.Module:
    """A tiny random ``model_type`` model with ``head``, in eval mode."""
    import transformers

    auto = getattr(transformers, HEAD_MAPPINGS[head][0])
    config = tiny_config(model_type)
    if head == "seq-cls" and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    torch.manual_seed(seed)
    return auto.from_config(config, attn_implementation=attn_implementation).eval()


def inputs_for(model: torch.nn.Module) -> dict[str, Any]:
    """One batch of two sequences of token ids that the model's forward accepts."""
    config = model.config
    vocab = int(getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", 64) or 64)
    ids = (torch.arange(2 * SEQ_LEN).reshape(2, SEQ_LEN) * 5 + 3) % max(vocab - 4, 1) + 4
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    params = inspect.signature(model.forward).parameters
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        inputs["decoder_input_ids"] = ids
    if "use_cache" in params:
        inputs["use_cache"] = False
    return inputs
