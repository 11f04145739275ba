"""Patch, train a little, save, reload, write the model card, push (a dry run by default).

Runs offline on a tiny GPT-2 built from a config. With --push it uploads for real (needs HF_TOKEN
or `hf auth login`, and network):

    python examples/push_patched_checkpoint.py --output-dir /tmp/tiny-sparseout
    python examples/push_patched_checkpoint.py --output-dir /tmp/tiny-sparseout --repo-id me/tiny-sparseout --push
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, GPT2Config

import hf_sparseout
from hf_sparseout.hub import from_pretrained, push_checkpoint, save_pretrained, write_model_card


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, bos_token_id=0, eos_token_id=0, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output-dir", default=None, help="where to save the checkpoint (default: a temp dir)")
    parser.add_argument("--repo-id", default="my-user/tiny-gpt2-sparseout")
    parser.add_argument("--push", action="store_true", help="really upload (default: a dry run, no network)")
    args = parser.parse_args()

    model = tiny_gpt2()
    report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=args.q))
    print(f"patched {len(report.sparseout_sites)} sites with q={args.q:g}")

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(args.steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    print(f"trained {args.steps} steps, loss {loss.item():.3f}")

    out_dir = args.output_dir or tempfile.mkdtemp(prefix="tiny-sparseout-")
    save_pretrained(model, out_dir)  # config.json carries the "sparseout" block; atomic write
    reloaded = from_pretrained(out_dir, task="causal-lm", attn_implementation="eager")
    same_report = hf_sparseout.get_report(reloaded).to_dict() == report.to_dict()
    with torch.no_grad():
        same_outputs = torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    print(f"saved to {out_dir}; reloaded with the same report: {same_report}, same eval outputs: {same_outputs}")
    if not (same_report and same_outputs):
        raise SystemExit(1)

    card = write_model_card(out_dir, repo_id=args.repo_id)
    print(f"model card written to {card}")

    result = push_checkpoint(out_dir, args.repo_id, dry_run=not args.push, commit_message="tiny Sparseout example")
    verb = "pushed" if result.pushed else "would push"
    print(f"{verb} {len(result.files)} files to {result.repo_id}: {', '.join(result.files)}")
    if result.commit_url:
        print(f"commit: {result.commit_url}")


if __name__ == "__main__":
    main()
