"""TRL's SFTTrainer + Sparseout: patch, supervised fine-tuning with sparsity in every evaluation, save, reload.

Runs offline on the same small GPT-2, byte tokenizer and text as `trainer_sparseout.py`; needs
`pip install 'hf-sparseout[trl]'`. SFTTrainer tokenizes the "text" column itself.

    python examples/trl_sft_sparseout.py --steps 20 --output-dir /tmp/sft-sparseout
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset
from trainer_sparseout import byte_tokenizer, texts  # the example beside this one
from transformers import GPT2Config, GPT2LMHeadModel
from trl import SFTConfig, SFTTrainer

import hf_sparseout
from hf_sparseout import SparsityCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None, help="where to save the model (default: a temp dir)")
    args = parser.parse_args()
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="sft-sparseout-")

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2)
    config.pad_token_id = config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    model = GPT2LMHeadModel(config)
    report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=args.q))
    print(f"patched {len(report.sparseout_sites)} sites with Sparseout (q={args.q})")

    data = Dataset.from_dict({"text": texts(240)}).train_test_split(test_size=40, seed=0)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=out_dir,
            max_length=96,
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
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
    )
    SparsityCallback.attach(trainer, per_site=False)  # overall figures only
    trainer.train()

    for entry in trainer.state.log_history:
        if "eval_loss" in entry:
            print(
                f"eval @ step {entry['step']}: eval_loss={entry['eval_loss']:.3f} "
                f"hoyer={entry['eval_sparsity_hoyer']:.4f} near_zero={entry['eval_sparsity_near_zero_fraction']:.4f}"
            )

    hf_sparseout.save_pretrained(trainer.model, out_dir, tokenizer)
    reloaded = hf_sparseout.from_pretrained(out_dir).eval()
    # TRL trains in bf16 autocast where the CPU supports it: accelerate wraps model.forward for that;
    # unwrap it to compare float32 outputs.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    ids = tokenizer(texts(2), return_tensors="pt", padding=True)
    with torch.no_grad():
        same = torch.allclose(reloaded(**ids).logits, model(**ids).logits, atol=1e-6)
    print(f"saved to {out_dir}; reloaded patched: {hf_sparseout.is_patched(reloaded)}; outputs match: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
