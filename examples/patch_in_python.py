"""Patch a transformers model with Sparseout, train it a little with a plain PyTorch loop, undo it.

Runs offline: by default a tiny GPT-2 built from a config, trained on the bytes of a standard-library
docstring (byte-level tokens, vocabulary 256). Pass --model DIR to use a save_pretrained directory.

    python examples/patch_in_python.py --steps 20 --q 1.5
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json

import torch
from transformers import AutoModelForCausalLM, GPT2Config

import hf_sparseout


def corpus_batches(seq_len: int, batch_size: int, generator: torch.Generator):
    """Random windows of byte tokens from the `json` module's docs (always on disk)."""
    text = "\n".join(pyinspect.getdoc(obj) or "" for obj in (json, json.dumps, json.loads, json.JSONEncoder))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        yield torch.stack([data[s : s + seq_len] for s in starts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a save_pretrained directory (default: a tiny GPT-2 from a config)")
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--p", type=float, default=None, help="default: keep each site's own p")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
    else:
        config = GPT2Config(
            vocab_size=256,
            bos_token_id=0,
            eos_token_id=0,
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.1,
        )
        model = AutoModelForCausalLM.from_config(config)

    # 1. A dry run: every dropout site, and what the patch would do to it.
    config = hf_sparseout.SparseoutConfig(p=args.p, q=args.q)
    print(hf_sparseout.inspect(model, config))

    # 2. Patch in place: nn.Dropout modules, attention-probability dropout, functional F.dropout calls.
    report = hf_sparseout.patch(model, config)
    print(f"patched {len(report.sparseout_sites)} sites")

    # 3. Train a few steps with a plain loop.
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = corpus_batches(seq_len=64, batch_size=8, generator=torch.Generator().manual_seed(0))
    for step in range(1, args.steps + 1):
        ids = next(batches)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"step {step:3d}  loss {loss.item():.3f}")

    # 4. Undo: the original dropout modules and attributes come back, weights stay trained.
    hf_sparseout.unpatch(model)
    print(f"unpatched: is_patched={hf_sparseout.is_patched(model)}")


if __name__ == "__main__":
    main()
