"""transformers.Trainer + Sparseout: patch, train with activation sparsity in every evaluation, save, reload.

Runs offline: a small GPT-2 from a config, a byte-level tokenizer (no download) and text from Python's
own help pages. `SparsityCallback` adds `eval_sparsity_*` figures next to `eval_loss` in the
evaluation metrics, `trainer.state.log_history` and the `report_to` trackers.

    python examples/trainer_sparseout.py --steps 20 --output-dir /tmp/trainer-sparseout
"""

from __future__ import annotations

import argparse
import tempfile
from pydoc_data.topics import topics

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

import hf_sparseout
from hf_sparseout import SparsityCallback


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + end-of-text (also the padding token): nothing to download or train."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def texts(n: int) -> list[str]:
    """``n`` paragraphs of Python's help pages (the same on every machine with this Python)."""
    paragraphs = [p.strip() for text in topics.values() for p in text.split("\n\n") if len(p.strip()) > 40]
    return paragraphs[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: a temp dir)")
    args = parser.parse_args()
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="trainer-sparseout-")

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2)
    config.pad_token_id = config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    model = GPT2LMHeadModel(config)
    report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=args.q))  # before the Trainer is built
    print(f"patched {len(report.sparseout_sites)} sites with Sparseout (q={args.q})")

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=96)

    data = Dataset.from_dict({"text": texts(240)}).map(tokenize, batched=True, remove_columns=["text"])
    split = data.train_test_split(test_size=40, seed=0)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=out_dir,
            max_steps=args.steps,
            eval_strategy="steps",
            eval_steps=max(1, args.steps // 2),
            logging_steps=max(1, args.steps // 4),
            per_device_train_batch_size=8,
            per_device_eval_batch_size=8,
            learning_rate=2e-3,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            dataloader_pin_memory=torch.cuda.is_available(),
        ),
        train_dataset=split["train"],
        eval_dataset=split["test"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # pads: sparsity skips padding
    )
    SparsityCallback.attach(trainer)  # first in the callback list, so report_to trackers get the figures too
    trainer.train()

    for entry in trainer.state.log_history:
        if "eval_loss" in entry:
            print(
                f"eval @ step {entry['step']}: eval_loss={entry['eval_loss']:.3f} "
                f"hoyer={entry['eval_sparsity_hoyer']:.4f} near_zero={entry['eval_sparsity_near_zero_fraction']:.4f} "
                f"mean_abs={entry['eval_sparsity_mean_abs']:.4f}"
            )
    sites = sorted(k.split("/", 1)[1] for k in trainer.state.log_history[-2] if k.startswith("eval_sparsity_hoyer/"))
    print(f"per-site figures for {len(sites)} sites: {', '.join(sites)}")

    hf_sparseout.save_pretrained(trainer.model, out_dir, tokenizer)  # config.json carries the sparseout block
    reloaded = hf_sparseout.from_pretrained(out_dir).eval()
    model.eval()
    ids = tokenizer(texts(2), return_tensors="pt", padding=True)
    with torch.no_grad():
        same = torch.allclose(reloaded(**ids).logits, model(**ids).logits, atol=1e-6)
    print(f"saved to {out_dir}; reloaded patched: {hf_sparseout.is_patched(reloaded)}; outputs match: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
