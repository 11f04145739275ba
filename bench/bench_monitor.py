"""Overhead of ``SparsityMonitor``: forward throughput of a tiny GPT-2 with and without it (CPU).

The model is built from ``transformers.GPT2Config`` (4 layers, hidden 128, 4 heads, vocabulary 256; no
download) and patched with ``hf_sparseout.patch(model, SparseoutConfig(p=0.1, q=1.5))``. Each variant runs
the same model on the same padded batch (``attention_mask`` with 25 % right padding, so the masking path is
timed); the monitor is switched on and off with ``start()``/``stop()``. Variants:

* ``eval`` / ``eval+monitor``: eval mode, ``torch.no_grad()`` (the target: at most 1.10x). In eval the model does not
  apply attention-probability dropout, so those sites are not called.
* ``eval+monitor+hist``: as above with magnitude histograms at every site.
* ``train-fwd`` / ``train-fwd+monitor``: training-mode forward without gradients, all sites (attention included).

Each pass calls every variant once, in rotating order, so drifting load on a shared machine hits them alike; the
median per variant over the passes is reported, and ratios are to the monitor-less variant of the same mode.

Run:  python -m bench.bench_monitor [--batch 8] [--seq 128] [--pairs 150]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hf_sparseout
from bench.common import add_tiny_gpt2_args, median_seconds, tiny_gpt2, write_results
from hf_sparseout.metrics import SparsityMonitor


def build(layers: int, hidden: int, heads: int, seq: int) -> torch.nn.Module:
    """A patched tiny GPT-2 LM (randomly initialised, fixed seed)."""
    model = tiny_gpt2(layers, hidden, heads, seq)
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(p=0.1, q=1.5))
    return model


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tiny_gpt2_args(ap)
    ap.add_argument("--pairs", type=int, default=150)
    args = ap.parse_args(argv)

    model = build(args.layers, args.hidden, args.heads, args.seq)
    ids = torch.randint(0, 256, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[: args.batch // 2, -args.seq // 2 :] = 0  # a quarter of the tokens are padding
    plain = SparsityMonitor(model)
    with_hist = SparsityMonitor(model, histogram_sites=True)

    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)

    variants = {
        "eval": ("eval", None),
        "eval+monitor": ("eval", plain),
        "eval+monitor+hist": ("eval", with_hist),
        "train-fwd": ("train", None),
        "train-fwd+monitor": ("train", plain),
    }
    for mode in ("eval", "train"):  # warm-up: allocations, lazy initialisation
        model.train(mode == "train")
        median_seconds(forward, 0.2)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.pairs):
        # One call of each variant per pass, in rotating order: slow drift of a shared machine's load
        # hits every variant alike, and medians over passes drop the outliers.
        names = list(variants)
        names = names[i % len(names) :] + names[: i % len(names)]
        for name in names:
            mode, monitor = variants[name]
            model.train(mode == "train")
            if monitor is not None:
                monitor.start()
            try:
                start = time.perf_counter()
                forward()
                times[name].append(time.perf_counter() - start)
            finally:
                if monitor is not None:
                    monitor.stop()
    plain.compute()  # the result is valid: the sums are finite and cover every site
    rows = []
    for name, (mode, monitor) in variants.items():
        t = statistics.median(times[name])
        base = statistics.median(times[mode if mode == "eval" else "train-fwd"])
        sites = "-" if monitor is None else str(len(monitor.site_names))
        rows.append(
            {
                "variant": name,
                "sites": sites,
                "ms_per_batch": t * 1e3,
                "tokens_per_s": args.batch * args.seq / t,
                "x_time": t / base,
            }
        )
        print(rows[-1], flush=True)
    notes = (
        f"Tiny GPT-2 from GPT2Config ({args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab 256), "
        f"patched with SparseoutConfig(p=0.1, q=1.5); batch {args.batch} x seq {args.seq}, 25% right padding "
        f"(attention_mask passed, so the monitor masks). torch.no_grad forward; median over {args.pairs} passes that "
        "call every variant once in rotating order. x_time: over the same mode without the monitor, same run. "
        "Target (recorded, not asserted): eval+monitor at most 1.10x. In eval mode the model does not apply "
        "attention-probability dropout, so those sites (the largest tensors) are measured only in train-fwd. "
        "The machine is shared with other jobs: ratios near 1 carry a few percent of noise."
    )
    columns = ["variant", "sites", "ms_per_batch", "tokens_per_s", "x_time"]
    paths = write_results("monitor", "cpu", rows, columns, notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
