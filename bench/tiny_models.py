"""Tiny random models of any transformers text model type, for the patcher's coverage report and tests.

:func:`tiny_config` takes a type's default config and shrinks every size it knows (hidden sizes,
layers, heads, vocabulary, experts) in the config and its sub-configs, and sets every float
dropout probability (a config attribute with "drop" in its name, LayerDrop excepted: it keeps its
default) to :data:`P`. :func:`build` instantiates the first head the type has among
:data:`HEAD_ORDER`. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import dataclasses
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
    **dict.fromkeys(
        ("n_group", "topk_group", "n_groups", "num_expert_group", "mamba_n_groups", "mamba_ngroups"), 1
    ),  # groups of experts/SSM heads
    **dict.fromkeys(("moe_k",), 2),
    **dict.fromkeys(("mamba_n_heads", "n_mamba_heads"), 2),
    **dict.fromkeys(("num_kv_shared_layers",), 0),  # Gemma 3n/4: the last layers reuse KV; none of 2 can
    **dict.fromkeys(("embedding_dim",), 32),  # xLSTM
}
_LAYER_LISTS = ("layer_types", "layers_block_type", "mlp_layer_types")
"""Per-layer lists, cut to the shrunk layer count keeping every kind of layer (hybrid Mamba/attention, dense/MoE)."""
_SSM_HEADS = (("mamba_n_heads", "mamba_d_head", "mamba_expand"), ("num_heads", "head_dim", "expand"))
"""(heads, head size, expansion): a Mamba-2 mixer needs heads * head size == expansion * hidden size."""

_DEFAULT_FIXES: dict[str, dict[str, Any]] = {
    "gemma4_assistant": {  # its validator rejects its own default text config's per-layer inputs
        "text_config": {"model_type": "gemma4_text", "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}
    },
}
"""Arguments without which a type's default config does not validate."""

_QSA = {
    "indexer_n_heads": 2,
    "indexer_kv_heads": 1,
    "indexer_head_dim": 16,
    "indexer_budget": 4,
    "indexer_compress_ratio": 2,
}
_OVERRIDES: dict[str, dict[str, Any]] = {
    # default configs their own models cannot use
    "dots1": {"n_routed_experts": 4, "n_shared_experts": 1},  # None by default
    "dbrx": {  # DbrxAttention reads attn_config.rope_theta (not in the config) and clamps to +-clip_qkv (None)
        "attn_config.rope_theta": 10000.0,
        "attn_config.clip_qkv": 8.0,
    },
    # ReformerModelWithLMHead asserts is_decoder; axial position embeddings: dims sum to hidden_size, the shape's
    # product is the training sequence length, a multiple of the attention chunks
    "reformer": {
        "is_decoder": True,
        "axial_pos_embds_dim": [16, 16],
        "axial_pos_shape": [2, SEQ_LEN // 2],
        "lsh_attn_chunk_length": 4,
        "local_attn_chunk_length": 4,
        "num_buckets": 2,
    },
    "xmod": {"default_language": "en_XX"},  # the adapters need a language: the first of config.languages
    "esm": {"pad_token_id": 1},  # None by default: the position ids are computed from it
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},  # None by default, indexed per layer
    "cohere_compass_text": {
        "rope_parameters": {
            t: {"rope_type": "default", "rope_theta": 10000.0} for t in ("full_attention", "sliding_attention")
        }
    },  # per-layer-type RoPE parameters read by the rotary embedding, empty by default
    "esmc": {"num_key_value_heads": 2},  # no grouped-query attention
    # no attention among the first layers by default: the cache needs one (GraniteMoeHybrid), or the attention
    # dropout never runs (Bamba, Jamba)
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "bamba": {"attn_layer_indices": [1]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},  # attention every 8th layer from the 5th
    # the default layer types include indexed (QSA) attention, whose indexer sizes are None by default
    "qwen4_exp_text": _QSA,
    "qwen4_exp": {f"text_config.{k}": v for k, v in _QSA.items()},
    # interleaved RoPE on head_dim * partial_rotary_factor (0.25) channels: must be qk_rope_head_dim (16)
    "dots3_note_text": {"head_dim": 64},
    "dots3_note": {"text_config.head_dim": 64},
    # Zamba ties the first hybrid layer's shared transformer to the others': two hybrid layers
    "zamba": {"layers_block_type": ["linear_attention", "hybrid", "hybrid"], "num_hidden_layers": 3},
    # geometry the generic sizes break
    "lilt": {"hidden_size": 48},  # four box embeddings of hidden_size // 6 concatenated back to hidden_size
    "layoutlmv3": {"coordinate_size": 4, "shape_size": 8},  # 4 * coordinate_size + 2 * shape_size == hidden_size
    # dropout the model refuses
    # "does not support attention_dropout > 0"; "requires num_key_value_heads to be even"
    "diffllama": {"attention_dropout": 0.0, "num_key_value_heads": 2},
}
"""Per-type settings the generic shrinking cannot infer, each with its reason (``a.b``: ``b`` of sub-config ``a``)."""


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


_UNSET = {"head_dim": 16, "num_key_value_heads": 1, "vocab_size": 256, "num_experts_per_tok": 2}
"""Sizes some default configs leave at ``None`` although their model reads them (Hunyuan, Ministral, Nemotron, ESM,
DeepSeek-V2's router)."""


def _shrink(config: PretrainedConfig, changes: dict[int, dict[str, Any]]) -> None:
    """Shrink ``config`` and its sub-configs in place; ``changes[id(c)]`` records what was set on each."""
    if id(config) in changes:
        return
    changed = changes[id(config)] = {}

    def put(key: str, value: Any) -> None:
        setattr(config, key, value)
        changed[key] = value

    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _shrink(value, changes)
        elif key in _SIZES and isinstance(value, int) and not isinstance(value, bool) and value > _SIZES[key]:
            put(key, _SIZES[key])
        elif key in _UNSET and value is None:
            put(key, _UNSET[key])
        elif "drop" in key.lower() and "layerdrop" not in key.lower() and type(value) is float:
            put(key, P)
    attrs = vars(config)
    layers = attrs.get("num_hidden_layers")
    for key in _LAYER_LISTS:
        kinds = attrs.get(key)
        if isinstance(kinds, list) and isinstance(layers, int) and len(kinds) != layers:
            distinct = list(dict.fromkeys(kinds))
            n = max(layers, len(distinct))
            put(key, (distinct * n)[:n])
            if n != layers:
                put("num_hidden_layers", n)
    for heads, size, expand in _SSM_HEADS:
        if all(isinstance(attrs.get(k), int) for k in (heads, size, expand, "hidden_size")):
            put(size, attrs[expand] * attrs["hidden_size"] // attrs[heads])
            if isinstance(attrs.get("mamba_d_ssm"), int):  # Falcon-H1: the SSM width, heads * head size
                put("mamba_d_ssm", attrs[heads] * attrs[size])
    if isinstance(getattr(config, "vocab_size", None), int):
        vocab = min(config.vocab_size, max(256, *(i + 1 for i in _token_ids(config)), 0))
        if vocab != config.vocab_size:
            put("vocab_size", vocab)
    if attrs.get("kv_lora_rank") and isinstance(attrs.get("num_attention_heads"), int):
        # multi-head latent attention expands its latent to every head: no grouped KV heads to repeat
        put("num_key_value_heads", attrs["num_attention_heads"])


def _rebuilt(
    config: PretrainedConfig, default: PretrainedConfig, changes: dict[int, dict[str, Any]]
) -> PretrainedConfig:
    """``config``'s class built from its changed fields only, so ``__post_init__`` derives the other sizes again.

    Zamba's attention and Mamba head sizes, Gemma's layer types, T5Gemma's sub-configs are derived
    from the sizes set here; passing them back as they were (``from_dict(to_dict())``) would keep
    the defaults' values. A changed attribute that is not a field is set afterwards only where the
    rebuild left it at its default value (nothing derived it).
    """
    fields = {f.name for f in dataclasses.fields(config)}
    kwargs: dict[str, Any] = {}
    for key in fields:
        value = getattr(config, key, None)
        if isinstance(value, PretrainedConfig):
            kwargs[key] = _rebuilt(value, getattr(default, key), changes)
        elif key in changes.get(id(config), {}):
            kwargs[key] = value
    new = type(config)(**kwargs)
    for key, value in changes.get(id(config), {}).items():
        if key not in fields and getattr(new, key, None) == getattr(default, key, None):
            setattr(new, key, value)
    return new


def tiny_config(model_type: str, **overrides: Any) -> PretrainedConfig:
    """``model_type``'s default config, shrunk, every dropout probability set to :data:`P`."""
    config = AutoConfig.for_model(model_type, **_DEFAULT_FIXES.get(model_type, {}))
    default = copy.deepcopy(config)
    changes: dict[int, dict[str, Any]] = {}
    _shrink(config, changes)
    for key, value in {**_OVERRIDES.get(model_type, {}), **overrides}.items():
        target = config
        while "." in key:
            name, key = key.split(".", 1)
            target = getattr(target, name)
        setattr(target, key, value)
        changes.setdefault(id(target), {})[key] = value
    if dataclasses.is_dataclass(config):
        try:
            return _rebuilt(config, default, changes)
        except Exception:
            pass
    try:  # rebuilt from its dict, so values derived in __init__ follow the new sizes (BLT's projections)
        return type(config).from_dict(config.to_dict())
    except Exception:
        return config


def build(model_type: str, head: str, attn_implementation: str = "eager", seed: int = 0) -> torch.nn.Module:
    """A tiny random ``model_type`` model with ``head``, in eval mode."""
    import transformers

    auto = getattr(transformers, HEAD_MAPPINGS[head][0])
    config = tiny_config(model_type)
    model_class = auto._model_mapping[type(config)]
    if not isinstance(config, model_class.config_class):
        # a composite type whose head takes one of its sub-configs (MusicGen's causal LM: the decoder's)
        subs = [v for v in vars(config).values() if isinstance(v, model_class.config_class)]
        if len(subs) == 1:
            config = subs[0]
    if head == "seq-cls" and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    torch.manual_seed(seed)
    model = model_class._from_config(config, attn_implementation=attn_implementation).eval()
    if getattr(config, "default_language", None) and hasattr(model, "set_default_language"):
        model.set_default_language(config.default_language)  # X-MOD's per-language adapters
    return model


def inputs_for(model: torch.nn.Module) -> dict[str, Any]:
    """One batch of two sequences of token ids that the model's forward accepts."""
    config = model.config
    vocab = int(getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", 64) or 64)
    rows = 2 * int(getattr(config, "num_codebooks", 1) or 1)  # MusicGen's decoder: one row per codebook
    ids = (torch.arange(rows * SEQ_LEN).reshape(rows, SEQ_LEN) * 5 + 3) % max(vocab - 4, 1) + 4
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    params = inspect.signature(model.forward).parameters
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        inputs["decoder_input_ids"] = ids
    if "use_cache" in params:
        inputs["use_cache"] = False
    return inputs
