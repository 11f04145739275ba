"""Tiny configs for the patcher's architecture matrix (2 layers, hidden <= 64, dropout > 0).

Each entry: the ``model_type``, config kwargs, and the heads to test. Built with
``AutoModelFor*.from_config``, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from hf_sparseout.training.modeling import minilm_path

P = 0.1
COMMON = {"vocab_size": 96, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
HEADS = {
    "causal-lm": AutoModelForCausalLM,
    "seq-cls": AutoModelForSequenceClassification,
    "seq2seq": AutoModelForSeq2SeqLM,
}
_BERTLIKE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_dropout_prob": P,
    "attention_probs_dropout_prob": P,
    "max_position_embeddings": 64,
}
_LLAMALIKE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "attention_dropout": P,
    "max_position_embeddings": 64,
}

ARCHITECTURES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "gpt2": ({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}, ("causal-lm", "seq-cls")),
    "bert": (_BERTLIKE, ("seq-cls",)),
    "roberta": ({**_BERTLIKE, "max_position_embeddings": 72}, ("causal-lm", "seq-cls")),
    "distilbert": (
        {
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 64,
            "dropout": P,
            "attention_dropout": P,
            "seq_classif_dropout": P,
        },
        ("seq-cls",),
    ),
    "albert": ({**_BERTLIKE, "embedding_size": 16, "classifier_dropout_prob": P}, ("seq-cls",)),
    "electra": ({**_BERTLIKE, "embedding_size": 16}, ("causal-lm", "seq-cls")),
    "deberta-v2": ({**_BERTLIKE, "pooler_dropout": P, "pooler_hidden_size": 32}, ("seq-cls",)),
    "modernbert": (
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "attention_dropout": P,
            "embedding_dropout": P,
            "mlp_dropout": P,
            "classifier_dropout": P,
            "max_position_embeddings": 64,
        },
        ("seq-cls",),
    ),
    "t5": (
        {
            "d_model": 32,
            "d_kv": 16,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 2,
            "dropout_rate": P,
            "decoder_start_token_id": 0,
        },
        ("seq2seq", "seq-cls"),
    ),
    "bart": (
        {
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "dropout": P,
            "attention_dropout": P,
            "activation_dropout": P,
            "classifier_dropout": P,
            "max_position_embeddings": 64,
        },
        ("causal-lm", "seq-cls"),
    ),
    "opt": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "ffn_dim": 64,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
            "dropout": P,
            "attention_dropout": P,
            "max_position_embeddings": 64,
        },
        ("causal-lm", "seq-cls"),
    ),
    "gpt_neox": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "hidden_dropout": P,
            "attention_dropout": P,
            "max_position_embeddings": 64,
        },
        ("causal-lm", "seq-cls"),
    ),
    "gptj": (
        {
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 2,
            "rotary_dim": 8,
            "n_positions": 64,
            "resid_pdrop": P,
            "embd_pdrop": P,
            "attn_pdrop": P,
        },
        ("causal-lm", "seq-cls"),
    ),
    "falcon": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "hidden_dropout": P,
            "attention_dropout": P,
        },
        ("causal-lm", "seq-cls"),
    ),
    "phi": (
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "resid_pdrop": P,
            "embd_pdrop": P,
            "attention_dropout": P,
            "max_position_embeddings": 64,
        },
        ("causal-lm", "seq-cls"),
    ),
    "llama": (_LLAMALIKE, ("causal-lm", "seq-cls")),
    "mistral": (_LLAMALIKE, ("causal-lm", "seq-cls")),
    "qwen2": (_LLAMALIKE, ("causal-lm", "seq-cls")),
    "gemma": ({**_LLAMALIKE, "head_dim": 8}, ("causal-lm", "seq-cls")),
    "bloom": (
        {"hidden_size": 32, "n_layer": 2, "n_head": 2, "hidden_dropout": P, "attention_dropout": P},
        ("causal-lm", "seq-cls"),
    ),
}


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# Real checkpoints (the shared tiny-gpt2, the pretrained MiniLM): name -> (directory or None, heads).
REAL_CHECKPOINTS: dict[str, tuple[Path | None, tuple[str, ...]]] = {
    "tiny-gpt2": (
        SHARED / "models" / "tiny-gpt2" if (SHARED / "models" / "tiny-gpt2").is_dir() else None,
        ("causal-lm", "seq-cls"),
    ),
    "all-minilm-l6-v2": (minilm_path(), ("seq-cls",)),
}


def build(arch: str, head: str, attn_implementation: str, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised tiny model of ``arch`` with ``head`` (or a real checkpoint), in eval mode."""
    if arch in REAL_CHECKPOINTS:
        path = REAL_CHECKPOINTS[arch][0]
        torch.manual_seed(seed)
        model = HEADS[head].from_pretrained(path, attn_implementation=attn_implementation, pad_token_id=0)
        return model.eval()
    kwargs, _ = ARCHITECTURES[arch]
    config = AutoConfig.for_model(arch, **COMMON, **kwargs)
    if head == "causal-lm" and arch in ("roberta", "electra"):
        config.is_decoder = True
    torch.manual_seed(seed)
    model = HEADS[head].from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def cases() -> list[tuple[str, str]]:
    """Every (architecture, head) pair of the matrix, real checkpoints included."""
    pairs = [(arch, head) for arch, (_, heads) in ARCHITECTURES.items() for head in heads]
    return pairs + [(name, head) for name, (_, heads) in REAL_CHECKPOINTS.items() for head in heads]


def batch(model: torch.nn.Module, seq_len: int = 8) -> dict[str, torch.Tensor]:
    """Two sequences, the second left... right-padded by 3, each ending in EOS (BART's classifier needs it)."""
    ids = (torch.arange(2 * seq_len).reshape(2, seq_len) * 5 + 3) % (COMMON["vocab_size"] - 3) + 3
    mask = torch.ones_like(ids)
    ids[0, -1] = COMMON["eos_token_id"]
    ids[1, -4] = COMMON["eos_token_id"]
    ids[1, -3:] = COMMON["pad_token_id"]
    mask[1, -3:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs
