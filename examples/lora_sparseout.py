"""LoRA + Sparseout: make PEFT's lora_dropout (and the base model's dropout) Sparseout.

Runs offline on a tiny GPT-2 built from a config; needs `pip install 'hf-sparseout[peft]'`.

    python examples/lora_sparseout.py --steps 10 --output-dir /tmp/lora-sparseout
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config

import hf_sparseout


def base_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, bos_token_id=0, eos_token_id=0, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    return AutoModelForCausalLM.from_config(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--q", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--output-dir", default=None, help="where to save the adapter (default: a temp dir)")
    args = parser.parse_args()

    model = get_peft_model(base_model(), LoraConfig(r=8, target_modules=["c_attn"], lora_dropout=0.1))
    report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=args.q))
    lora_sites = [s.name for s in report.sparseout_sites if "lora_dropout" in s.name]
    print(f"{len(report.sparseout_sites)} Sparseout sites, {len(lora_sites)} of them LoRA dropout:")
    print("\n".join(f"  {name}" for name in lora_sites))

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(args.steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"final loss {loss.item():.3f}")

    out_dir = args.output_dir or tempfile.mkdtemp(prefix="lora-sparseout-")
    model.save_pretrained(out_dir)  # adapter weights only; the patch changes no parameter names
    model.eval()
    reloaded = PeftModel.from_pretrained(base_model(), out_dir).eval()
    same = torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    print(f"adapter saved to {out_dir}; reloaded outputs match: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
