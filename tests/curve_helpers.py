"""A prepared, untrained finetune run (``RunContext``) on random token blocks, for the curve's tests.

Training blocks use token ids 1..63 and eval blocks 64..127, so a forward's input says which set
its rows came from (and ``row_ids`` which rows: the first token of each block is its index).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

VOCAB = 128
EVAL_BASE = 64


def blocks(n: int, seq: int, low: int, high: int, seed: int) -> Any:
    """``n`` causal-LM blocks of ``seq`` tokens in ``[low, high)``; token 0 of block i is ``low + i % (high-low)``."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (n, seq), generator=g)
    ids[:, 0] = low + torch.arange(n) % (high - low)
    rows = ids.tolist()
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seq] * n, "labels": rows})


def tiny_gpt2() -> nn.Module:
    """A 2-layer GPT-2 with dropout 0.1 (attention-probability dropout included)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def run_context(train: int = 40, evaluation: int = 40, seq: int = 16, **options: Any):
    """A ``RunContext`` from ``prepare_run`` (model built, patched and prepared; nothing trained).

    ``options`` are ``FinetuneArgs`` fields (``--sparsity-curve`` is on); the training set is split as
    ``finetune`` splits it (``threshold_curve.split_calibration``).
    """
    from accelerate import Accelerator
    from transformers import default_data_collator

    from hf_sparseout.training import threshold_curve
    from hf_sparseout.training.args import FinetuneArgs
    from hf_sparseout.training.loop import RunInputs, prepare_run

    args = FinetuneArgs(
        **{"from_config": "gpt2-tiny", "block_size": seq, "batch_size": 4, "max_steps": 0, "sparsity_curve": True}
        | options
    )
    args.validate()
    args.resolve_defaults()
    train_set, calibration_set = threshold_curve.split_calibration(blocks(train, seq, 1, EVAL_BASE, 1), args)
    inputs = RunInputs(
        args=args,
        accelerator=Accelerator(cpu=True),
        make_model=tiny_gpt2,
        train_set=train_set,
        eval_set=blocks(evaluation, seq, EVAL_BASE, VOCAB, 2),
        collate=default_data_collator,
        task="causal-lm",
        num_labels=None,
    )
    inputs = replace(inputs, calibration_set=calibration_set)
    return prepare_run(inputs, "sparseout", 1.5)
