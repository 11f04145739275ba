"""Cost of the sparsity-quality curve (magnitude thresholding) against one plain evaluation (CPU).

The model is a tiny GPT-2 built from ``transformers.GPT2Config`` (4 layers, hidden 128, 4 heads, vocabulary
256; no download), randomly initialised with a fixed seed. The evaluation set is ``--eval-batches`` batches of
``--batch`` x ``--seq`` random tokens with 25 % right padding; calibration uses ``--calib-batches`` other batches
of the same shape. Default sites (GPT-2: ``attn.c_attn``, ``mlp.c_fc``, ``mlp.c_proj`` inputs; 12 sites).

Variants (each timed end to end, medians over ``--repeats`` rounds that run every variant once in rotating order):

* ``plain eval``: one evaluation pass, no hooks (the baseline, 1.00x).
* ``thresholded eval``: the same pass with thresholds at target 0.5 applied (hook overhead).
* ``calibration``: one calibration pass (exact quantiles: every magnitude is kept at this size).
* ``curve 7 points``: ``sparsity_curve`` at targets 0.1..0.7 reusing the plain eval as the reference
  (calibration + 7 thresholded evals): the target is at most 8x one plain eval.
  Without a reference at hand, ``sparsity_curve`` re-evaluates target 0: one plain eval more (+1x).

Run:  python -m bench.bench_threshold [--batch 8] [--seq 128] [--eval-batches 4] [--calib-batches 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import add_tiny_gpt2_args, tiny_gpt2, write_results
from hf_sparseout.metrics.threshold import apply_thresholds, batch_evaluator, calibrate, sparsity_curve

TARGETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def make_batches(n: int, batch: int, seq: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random tokens; half the sequences of each have their second half padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 256, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch // 2, seq // 2 :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tiny_gpt2_args(ap)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    model = tiny_gpt2(args.layers, args.hidden, args.heads, args.seq).eval()
    evaluation = make_batches(args.eval_batches, args.batch, args.seq, seed=1)
    calib = make_batches(args.calib_batches, args.batch, args.seq, seed=2)
    evaluate_fn = batch_evaluator(evaluation)
    reference = evaluate_fn(model, None)
    calibration = calibrate(model, calib, targets=[0.0, *TARGETS])

    def thresholded() -> Any:
        hooks = apply_thresholds(model, calibration, target=0.5)
        try:
            return evaluate_fn(model, hooks)
        finally:
            hooks.remove()

    variants: dict[str, Callable[[], Any]] = {
        "plain eval": lambda: evaluate_fn(model, None),
        "thresholded eval": thresholded,
        "calibration": lambda: calibrate(model, calib, targets=[0.0, *TARGETS]),
        "curve 7 points": lambda: sparsity_curve(model, calib, evaluate_fn, targets=TARGETS, reference=reference),
    }
    for name, fn in variants.items():  # warm-up
        fn()
        print("warm-up:", name, flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.repeats):
        names = list(variants)
        names = names[i % len(names) :] + names[: i % len(names)]
        for name in names:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    curve = sparsity_curve(model, calib, evaluate_fn, targets=TARGETS, reference=reference)
    base = statistics.median(times["plain eval"])
    rows = []
    for name in variants:
        t = statistics.median(times[name])
        rows.append({"variant": name, "seconds": t, "x_plain_eval": t / base})
        print(rows[-1], flush=True)
    reached = ", ".join(f"{p.target:g}->{p.sparsity:.3f}" for p in curve.points)
    tokens = sum(int(b["attention_mask"].sum()) for b in evaluation)
    notes = (
        f"Tiny GPT-2 from GPT2Config ({args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab 256, "
        f"random init); eval {args.eval_batches} batches x {args.batch} x {args.seq} ({tokens} real tokens, 25% "
        f"right padding), calibration {args.calib_batches} batches of the same shape; default GPT-2 sites "
        f"({len(calibration.sites)}). Median over {args.repeats} rounds running every variant once in rotating "
        "order; x_plain_eval: over the plain eval of the same run. Target (recorded, not asserted): curve 7 points "
        f"at most 8x. Reached sparsity per target (parameter-weighted): {reached}. The machine is shared with "
        "other jobs: ratios carry a few percent of noise."
    )
    paths = write_results("threshold_curve", "cpu", rows, ["variant", "seconds", "x_plain_eval"], notes)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
