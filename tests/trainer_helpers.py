"""Shared pieces of the Trainer-callback tests: a patched tiny GPT-2 and padded token datasets."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator

import hf_sparseout

VOCAB, SEQ = 96, 12


def tiny_model(q: float = 1.5) -> GPT2LMHeadModel:
    """A GPT-2 of 2 blocks, patched (7 Sparseout sites: 5 of them run in eval, attention runs in training only)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=q))
    return model


def token_dataset(rows: int, seed: int) -> Dataset:
    """Right-padded rows of random tokens (lengths 4..SEQ); padding has label -100 and attention 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, SEQ), generator=g)
    lengths = torch.randint(4, SEQ + 1, (rows,), generator=g)
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def training_args(output_dir: Any, **overrides: Any) -> TrainingArguments:
    """A few CPU steps, evaluation every 3 steps, a loss logged every step, nothing saved or reported."""
    options = dict(
        output_dir=str(output_dir),
        max_steps=6,
        eval_strategy="steps",
        eval_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        learning_rate=1e-3,
        seed=0,
        data_seed=0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        # On a machine without CUDA, processes of `accelerate launch --multi_gpu` join a gloo group only with
        # use_cpu (else each would run alone).
        use_cpu=not torch.cuda.is_available(),
    )
    options.update(overrides)
    return TrainingArguments(**options)


def make_trainer(output_dir: Any, callbacks: list | None = None, eval_rows: int = 7, **overrides: Any) -> Trainer:
    """A Trainer on the tiny patched model: 24 train rows, ``eval_rows`` eval rows (7: an uneven last batch)."""
    return Trainer(
        model=tiny_model(),
        args=training_args(output_dir, **overrides),
        train_dataset=token_dataset(24, seed=1),
        eval_dataset=token_dataset(eval_rows, seed=2),
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
