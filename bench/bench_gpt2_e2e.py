"""End-to-end benchmark: a GPT-2-small-shaped model training step, unpatched (dropout) vs Sparseout.

The model is built from ``transformers.GPT2Config`` (12 layers, hidden 768, 12 heads, no download), in
bfloat16, sequence 1024, AdamW. A step is forward with labels, backward, optimizer step, zero_grad. Reported:
median step time and peak allocated memory (``torch.cuda.max_memory_allocated`` over one step after warm-up),
and their ratios to the unpatched model of the same run.

Variants: ``dropout`` (unpatched), ``sparseout`` (``hf_sparseout.patch(model, SparseoutConfig(p=None,
q=1.5))``, attention-probability dropout included, the default backend: the Triton kernel on CUDA),
``sparseout-keepattn`` (same with ``attention="keep"``: attention-probability dropout stays SDPA's own),
``sparseout-explicit`` (as ``sparseout`` with the flash attention kernel turned off: SDPA sites computed
explicitly, the path before issue 17) and ``sparseout-eager`` (as ``sparseout``, eager backend: explicit
attention and the eager element-wise op).
If ``hf_sparseout.patch`` is missing the ``nn.Dropout`` modules are swapped for ``hf_sparseout.Sparseout`` instead
(attention-probability dropout then stays plain dropout; the notes say which was used).

Run:  python -m bench.bench_gpt2_e2e [--batch 8] [--attn sdpa|eager]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

import hf_sparseout
from bench.common import median_seconds, write_results
from hf_sparseout.kernels.attention_op import flash_enabled as _flash_on
from hf_sparseout.kernels.attention_op import set_flash_enabled
from hf_sparseout.ops import backend


@contextlib.contextmanager
def flash_enabled(on: bool) -> Iterator[None]:
    """Run the block with the flash attention path on or off."""
    before = _flash_on()
    set_flash_enabled(on)
    try:
        yield
    finally:
        set_flash_enabled(before)


VARIANTS = ("dropout", "sparseout", "sparseout-explicit", "sparseout-keepattn", "sparseout-eager")


def build(attn: str) -> nn.Module:
    """A freshly initialised GPT-2-small-shaped LM in bfloat16 on CUDA, in training mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, attn_implementation=attn)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).to(device="cuda", dtype=torch.bfloat16)
    return model.train()


def patch(model: nn.Module, q: float, attention: str = "sparseout") -> str:
    """Make the model's dropout sites Sparseout; return a description of what was patched."""
    if hasattr(hf_sparseout, "patch") and hasattr(hf_sparseout, "SparseoutConfig"):
        report = hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(p=None, q=q, attention=attention))
        kinds = Counter(s.kind for s in report.sparseout_sites)
        plain = Counter(s.kind for s in report.plain_sites)
        return f"hf_sparseout.patch: Sparseout sites by kind {dict(kinds)}; plain dropout sites left {dict(plain)}"
    n = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Dropout):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, hf_sparseout.Sparseout(p=module.p, q=q))
            n += 1
    return f"module swap: {n} nn.Dropout -> Sparseout; attention-probability dropout NOT covered (stays dropout)"


def measure(variant: str, args: argparse.Namespace) -> dict:
    """Step time and peak memory of one variant."""
    model = build(args.attn)
    how = "unpatched"
    if variant != "dropout":
        how = patch(model, args.q, "keep" if variant == "sparseout-keepattn" else "sparseout")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device="cuda")
    name = "eager" if variant == "sparseout-eager" else "auto"
    flash = variant != "sparseout-explicit"

    def step() -> None:
        with backend.use_backend(name), flash_enabled(flash):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    t = median_seconds(step, args.min_run_time)
    return {"variant": variant, "step_ms": t * 1e3, "peak_GiB": peak / 2**30, "patch": how}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--q", type=float, default=1.5)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--min-run-time", type=float, default=5.0)
    ap.add_argument("--name", default="e2e_gpt2")
    args = ap.parse_args(argv)
    rows = []
    for variant in VARIANTS:
        rows.append(measure(variant, args))
        gc.collect()
        torch.cuda.empty_cache()
    for r in rows:
        r["x_time"] = r["step_ms"] / rows[0]["step_ms"]
        r["x_memory"] = r["peak_GiB"] / rows[0]["peak_GiB"]
        r |= {"batch": args.batch, "seq": args.seq, "q": args.q, "attn": args.attn}
        print(r, flush=True)
    notes = (
        f"GPT-2-small shape from GPT2Config (12 layers, hidden 768, 12 heads), bfloat16 weights and activations, "
        f"batch {args.batch} x sequence {args.seq}, attn_implementation={args.attn}, AdamW, dropout p = 0.1 "
        f"(GPT-2 defaults), Sparseout q = {args.q}. Step = forward with labels + backward + optimizer step. "
        f"Time: median over >= {args.min_run_time} s; memory: peak allocated over one step after 3 warm-up steps. "
        "x_time / x_memory: over the unpatched model in the same run. Targets (recorded, not asserted): "
        "sparseout at most 1.10x time and 1.05x memory (issue 17).\n\n"
        + "\n".join(f"Patch ({r['variant']}): {r['patch']}" for r in rows[1:])
    )
    columns = ["variant", "attn", "batch", "seq", "q", "step_ms", "x_time", "peak_GiB", "x_memory"]
    paths = write_results(f"{args.name}_{args.attn}", "cuda", rows, columns, notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
