"""The flash Sparseout-attention kernel's test cases, its float64 reference and the tiny models it patches.

Shared by tests/test_attention_interpreter.py and tests/test_attention_patcher_interpreter.py (Triton's
interpreter on the CPU, in a subprocess) and tests/test_attention_gpu.py (CUDA).
"""

from __future__ import annotations

import torch

MAX_SCALE = 1e4

# name: (dtype, B, H, HKV, M, N, D, causal, mask kind, p, q)
CASES = {
    "fp32-causal-q1.5": (torch.float32, 1, 2, 2, 37, 37, 32, True, None, 0.3, 1.5),
    "fp32-padding-bool-q0.5": (torch.float32, 2, 2, 2, 21, 29, 32, False, "bool", 0.2, 0.5),
    "fp32-alibi-gqa-causal-q3": (torch.float32, 1, 4, 2, 33, 33, 64, True, "alibi", 0.4, 3.0),
    "fp32-q2-dropout-d96": (torch.float32, 1, 2, 1, 19, 40, 96, False, None, 0.25, 2.0),
    "bf16-causal-padding-q1": (torch.bfloat16, 2, 2, 2, 24, 24, 32, True, "bool", 0.3, 1.0),
    "fp16-float-mask-gqa-q1.5": (torch.float16, 1, 4, 1, 20, 20, 64, False, "float", 0.3, 1.5),
}


def make_case(name: str) -> dict:
    dtype, B, H, HKV, M, N, D, causal, kind, p, q = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    qkv = [torch.randn(B, h, n, D, generator=g) for h, n in ((H, M), (HKV, N), (HKV, N))]
    mask = None
    if kind == "bool":  # padding: the last keys of batch 1 are padding; one query row of batch 1 sees nothing
        mask = torch.ones(B, 1, M, N, dtype=torch.bool)
        mask[-1, :, :, N - 5 :] = False
        mask[-1, :, 3, :] = False
    elif kind == "alibi":  # ALiBi-style bias: -slope_h * (i - j), one slope per head
        slopes = 2.0 ** (-torch.arange(1, H + 1, dtype=torch.float32))
        dist = torch.arange(M)[:, None] - torch.arange(N)[None, :]
        mask = (-slopes[:, None, None] * dist.abs()).unsqueeze(0)
    elif kind == "float":  # additive padding mask as transformers builds it: 0 or the dtype's min
        mask = torch.zeros(B, 1, M, N)
        mask[..., N - 4 :] = torch.finfo(dtype).min
        mask = mask.to(dtype)
    grad = torch.randn(B, H, M, D, generator=g)
    return {
        "q": qkv[0].to(dtype),
        "k": qkv[1].to(dtype),
        "v": qkv[2].to(dtype),
        "mask": mask,
        "grad": grad.to(dtype),
        "causal": causal,
        "p": p,
        "sq": q,
    }


# --- float64 reference ------------------------------------------------------------------------------------------


class _ProbSparseout(torch.autograd.Function):
    """P + P**h * noise (0 where P = 0), backward grad * (1 + min(coef * P**(h-1), MAX_SCALE) * noise)."""

    @staticmethod
    def forward(ctx, probs, noise, h, coef):
        ctx.save_for_backward(probs, noise)
        ctx.h, ctx.coef = h, coef
        return probs + torch.where(probs > 0, probs.pow(h), 0.0) * noise

    @staticmethod
    def backward(ctx, grad):
        probs, noise = ctx.saved_tensors
        power = (ctx.coef * probs.pow(ctx.h - 1)).clamp(max=MAX_SCALE)
        return grad * (1 + power * noise), None, None, None


def reference(c: dict, keep: torch.Tensor, gradient: str, sq: float | None = None) -> dict:
    sq = c["sq"] if sq is None else sq
    q, k, v = (c[t].double().requires_grad_() for t in "qkv")
    group = q.size(1) // k.size(1)
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = q @ kr.transpose(-1, -2) / q.size(-1) ** 0.5
    M, N = s.shape[-2:]
    if c["causal"]:
        s = s.masked_fill(~torch.ones(M, N, dtype=torch.bool).tril(), float("-inf"))
    if c["mask"] is not None:
        m = c["mask"]
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.double()
    probs = torch.softmax(s, -1).nan_to_num(0.0)
    noise = keep.double() / (1 - c["p"]) - 1
    h = sq / 2
    coef = 1.0 if gradient == "reference" else h
    out = _ProbSparseout.apply(probs, noise, h, coef) @ vr
    out.backward(c["grad"].double())
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad, "probs": probs.detach()}


TOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}  # measured: 3e-7, 7e-3, 3e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm().clamp(min=1e-30))


def tiny_attention_models() -> dict:
    """A tiny GPT-2 (padding mask) and a tiny Llama (GQA, causal) on SDPA, each with its training batch."""
    from architectures import COMMON, batch
    from transformers import AutoConfig, AutoModelForCausalLM

    gpt2 = AutoConfig.for_model("gpt2", **COMMON, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    llama = AutoConfig.for_model(
        "llama",
        **COMMON,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_dropout=0.2,
    )
    out = {}
    for name, cfg in (("gpt2", gpt2), ("llama-gqa", llama)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        inputs = batch(model)
        out[name] = (model, {**inputs, "labels": inputs["input_ids"], "use_cache": False})
    return out
