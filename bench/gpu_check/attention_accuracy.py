"""Stage (c) of the GPU check: the flash attention kernel against the explicit path, on the GPU, same mask.

For each case (dtype fp32/bf16/fp16 x shape causal / padding mask / GQA / additive mask, q = 1.5 with the
reference gradient rule, and one exact-rule case) the flash kernel runs on the inputs in their dtype, then the
CUDA generator is rewound and the patcher's explicit path (scores, softmax, the Sparseout element-wise kernel on
the (B, H, M, N) probabilities, matmul) runs on the same values in float32: both draw the same Philox
``(seed, ctr)``, and the attention kernel's mask is the element-wise kernel's stream, so the masks are equal.
Recorded per case, for the output and dQ, dK, dV: the relative error ``||flash - explicit|| / ||explicit||``
(the verdict, against a tolerance per dtype) and the max relative error ``max |flash - explicit| / max
|explicit|``. A kernel that fails to compile or launch is an ``error`` row; a
numerical mismatch is a ``FAIL`` (never hidden by the fail-soft fallback: this calls the kernel directly).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.gpu_check.record import Deadline, add_stage_args, write_json

TOLERANCE = {"float32": 4e-5, "bfloat16": 3e-2, "float16": 4e-3}
"""Relative error (norm) allowed per input dtype: twice the interpreter tests' (tests/attention_reference.py), as
the GPU tests allow (the GPU's bf16/fp16 dot and exp round differently)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SHAPES: dict[str, dict[str, Any]] = {
    # B, H, HKV, M, N, D, causal, mask kind
    "causal": dict(b=2, h=4, hkv=4, m=256, n=256, d=64, causal=True, mask=None),
    "padding": dict(b=3, h=4, hkv=4, m=200, n=200, d=64, causal=False, mask="padding"),
    "gqa": dict(b=2, h=8, hkv=2, m=256, n=256, d=64, causal=True, mask=None),
    "additive": dict(b=1, h=2, hkv=2, m=96, n=320, d=128, causal=False, mask="additive"),
}


def build_parser() -> argparse.ArgumentParser:
    """Arguments: ``--out``, ``--time-limit-s``, ``--dtypes``, ``--shapes``, ``--p``, ``--q``."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check.attention_accuracy", description=__doc__)
    add_stage_args(ap)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--q", type=float, default=1.5)
    return ap


def dry_check(args: argparse.Namespace) -> None:
    """The kernel's and the explicit path's modules import."""
    from hf_sparseout.kernels import attention_op  # noqa: F401
    from hf_sparseout.patcher import redirect  # noqa: F401


def make_mask(kind: str | None, b: int, m: int, n: int, device: torch.device) -> torch.Tensor | None:
    """``None``; a (B, 1, M, N) boolean key-padding mask (sequence ``i`` keeps its first ``n - 37 i`` keys); or a
    (1, 1, M, N) additive ALiBi-like float bias."""
    if kind is None:
        return None
    if kind == "padding":
        lengths = torch.tensor([max(1, n - 37 * i) for i in range(b)], device=device)
        keep = torch.arange(n, device=device)[None, :] < lengths[:, None]
        return keep[:, None, None, :].expand(b, 1, m, n).contiguous()
    pos = torch.arange(n, device=device, dtype=torch.float32)
    return (-0.05 * (pos[None, :] - torch.arange(m, device=device, dtype=torch.float32)[:, None]).abs())[None, None]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(||a - b|| / ||b||, max |a - b| / max |b|)`` in float64 (``inf`` on a non-finite ``a``)."""
    a64, b64 = a.double(), b.double()
    if not torch.isfinite(a64).all():
        return float("inf"), float("inf")
    d = a64 - b64
    return float(d.norm() / b64.norm().clamp_min(1e-30)), float(d.abs().max() / b64.abs().max().clamp_min(1e-30))


def compare(dtype: str, shape: str, p: float, sq: float, gradient: str) -> dict[str, Any]:
    """One case: flash (``dtype``) vs explicit (float32) on the same values and the same Philox draw."""
    from hf_sparseout import Sparseout
    from hf_sparseout.kernels.attention_op import set_flash_enabled, sparseout_attention
    from hf_sparseout.patcher.redirect import attention_with_site

    cfg = SHAPES[shape]
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    qs, kvs = (cfg["b"], cfg["h"], cfg["m"], cfg["d"]), (cfg["b"], cfg["hkv"], cfg["n"], cfg["d"])
    q, k, v = (torch.randn(s, device=dev, generator=gen).to(DTYPES[dtype]) for s in (qs, kvs, kvs))
    g = torch.randn(qs, device=dev, generator=gen).to(DTYPES[dtype])
    mask = make_mask(cfg["mask"], cfg["b"], cfg["m"], cfg["n"], dev)
    gqa = cfg["h"] != cfg["hkv"]
    state = torch.cuda.get_rng_state(dev)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sparseout_attention(*ins, mask, cfg["causal"], None, p, sq, gradient)
    grads = torch.autograd.grad(out, ins, g)
    torch.cuda.set_rng_state(state, dev)
    ref_ins = [t.float().requires_grad_() for t in (q, k, v)]
    site = Sparseout(p=p, q=sq, gradient=gradient).train()
    set_flash_enabled(False)
    try:
        kwargs = {"attn_mask": mask, "is_causal": cfg["causal"], "enable_gqa": gqa}
        ref = attention_with_site(site, tuple(ref_ins), kwargs)
    finally:
        set_flash_enabled(True)
    ref_grads = torch.autograd.grad(ref, ref_ins, g.float())
    errs = {"out": rel_err(out, ref)}
    errs |= {f"d{n}": rel_err(a, b) for n, a, b in zip("qkv", grads, ref_grads, strict=True)}
    worst = max(e[0] for e in errs.values())
    row = {"dtype": dtype, "shape": shape, "q": sq, "gradient": gradient, **cfg}
    row |= {"rel_err": {k: e[0] for k, e in errs.items()}, "max_rel_err": {k: e[1] for k, e in errs.items()}}
    return row | {"worst_rel_err": worst, "tolerance": TOLERANCE[dtype], "ok": worst <= TOLERANCE[dtype]}


def cases(args: argparse.Namespace) -> list[tuple[str, str, float, str]]:
    """``(dtype, shape, q, gradient)`` for every case, plus one exact-rule case (the first dtype and shape)."""
    out = [(d, s, args.q, "reference") for d in args.dtypes for s in args.shapes]
    return [*out, (args.dtypes[0], args.shapes[0], args.q, "exact")]


def summarise(rows: list[dict[str, Any]], total: int) -> tuple[str, str]:
    """``(verdict, summary)``: FAIL on any failed or errored case; per dtype the worst error over its tolerance."""
    bad = [r for r in rows if not r["ok"]]
    ran = [r for r in rows if "error" not in r]
    ratio = {d: max((r["worst_rel_err"] / r["tolerance"] for r in ran if r["dtype"] == d), default=0.0) for d in DTYPES}
    worst_max = max((max(r["max_rel_err"].values()) for r in ran), default=float("nan"))
    summary = f"{len(rows)}/{total} cases, {len(bad)} failed ({len(rows) - len(ran)} errors); worst rel err / tol "
    summary += ", ".join(f"{d} {w:.2f}" for d, w in ratio.items()) + f"; max rel err {worst_max:.1e}"
    return ("FAIL" if bad else ("pass" if len(rows) == total else "none (unfinished)")), summary


def main(argv: list[str] | None = None) -> None:
    """Run every case that fits; write ``attention_accuracy.json`` after each."""
    args = build_parser().parse_args(argv)
    deadline = Deadline(args.time_limit_s)
    torch.backends.cuda.matmul.allow_tf32 = False  # the explicit path in true float32
    rows: list[dict[str, Any]] = []
    todo = cases(args)
    for dtype, shape, sq, gradient in todo:
        if deadline.time_left() <= 0:
            break
        try:
            rows.append(compare(dtype, shape, args.p, sq, gradient))
        except Exception as err:  # a compile or launch failure: recorded, the next case still runs
            rows.append({"dtype": dtype, "shape": shape, "q": sq, "gradient": gradient, "ok": False})
            rows[-1]["error"] = f"{type(err).__name__}: {str(err)[:500]}"
        print(rows[-1], flush=True)
        verdict, summary = summarise(rows, len(todo))
        write_json(args.out / "attention_accuracy.json", {"rows": rows, "verdict": verdict, "summary": summary})


if __name__ == "__main__":
    main()
