"""Tiny GPT-2 models and token batches shared by the magnitude-thresholding tests."""

from __future__ import annotations

import torch
from torch import nn


def tiny_gpt2(seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> nn.Module:
    """A random GPT-2 LM of ``n_layer`` blocks and width ``n_embd`` (vocabulary 128), in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=128, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def batches(n: int, batch: int = 3, seq: int = 24, seed: int = 0, pad: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token batches; the first sequence of each has its last ``pad`` positions padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 128, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            mask[0, -pad:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
