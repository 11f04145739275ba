"""Which path a patched SDPA call takes (flash kernel or explicit), and the report's ``path`` column (CPU)."""

from __future__ import annotations

import pytest
import torch
from architectures import batch, build

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.kernels import attention_op
from hf_sparseout.kernels.attention_op import flash_path_reason, predicted_path, set_flash_enabled
from hf_sparseout.ops import backend


def _qkv(h=4, hkv=4, d=32, dtype=torch.float32):
    return torch.randn(2, h, 8, d, dtype=dtype), torch.randn(2, hkv, 8, d, dtype=dtype), torch.randn(2, hkv, 8, d)


def test_a_supported_call_on_cpu_falls_back_only_for_the_device():
    q, k, v = _qkv()
    if not backend.triton_available():
        assert flash_path_reason(q, k, v, None, 1.5) == "triton is not installed"
        return
    assert flash_path_reason(q, k, v, None, 1.5) == "not a CUDA tensor"
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    assert flash_path_reason(q, k, v, mask, 1.5) == "not a CUDA tensor"
    assert flash_path_reason(q, k[:, :2], v[:, :2], None, 1.5, enable_gqa=True) == "not a CUDA tensor"


@pytest.mark.skipif(not backend.triton_available(), reason="triton not installed")
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"d": 8}, "head_dim 8"),
        ({"d": 160}, "head_dim 160"),
        ({"dtype": torch.float64}, "dtype torch.float64"),
        ({"hkv": 2}, "without enable_gqa"),
        ({"site_q": 0.0}, "q = 0"),
        ({"noise": "matched"}, "noise='matched'"),
        ({"mask": torch.zeros(2, 1, 8, 8, requires_grad=True)}, "requires grad"),
        ({"mask": torch.zeros(3, 1, 8, 8)}, "does not broadcast"),
        ({"mask": torch.zeros(2, 1, 8, 8, dtype=torch.int64)}, "attn_mask dtype"),
    ],
)
def test_unsupported_calls_say_why(change, reason):
    q, k, v = _qkv(hkv=change.get("hkv", 4), d=change.get("d", 32), dtype=change.get("dtype", torch.float32))
    if "dtype" in change:
        v = v.to(change["dtype"])
    why = flash_path_reason(q, k, v, change.get("mask"), change.get("site_q", 1.5), change.get("noise", "raw"))
    assert why is not None and reason in why, why


def test_switches_turn_the_flash_path_off():
    q, k, v = _qkv()
    set_flash_enabled(False)
    try:
        assert "disabled" in flash_path_reason(q, k, v, None, 1.5)
        assert predicted_path("sdpa", torch.device("cuda"), 1.5) == "explicit"
    finally:
        set_flash_enabled(True)
    with backend.use_backend("eager"):
        assert "backend 'eager'" in flash_path_reason(q, k, v, None, 1.5)


def test_predicted_path():
    assert predicted_path("eager", torch.device("cpu"), 1.5) == "eager"
    assert predicted_path("sdpa", torch.device("cpu"), 1.5) == "explicit"
    cuda = "flash" if backend.triton_available() else "explicit"
    assert predicted_path("sdpa", torch.device("cuda"), 1.5) == cuda
    assert predicted_path("sdpa", torch.device("cuda"), 1.5, noise="matched") == "explicit"
    assert predicted_path("sdpa", torch.device("cuda"), 0.0) == "explicit"


def test_sparseout_attention_rejects_bad_p_and_q():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"p=1\.0"):
        attention_op.sparseout_attention(q, k, v, p=1.0, q=1.5, rng=(0, 0))
    with pytest.raises(ValueError, match=r"q=0\.0"):
        attention_op.sparseout_attention(q, k, v, p=0.1, q=0.0, rng=(0, 0))


@pytest.mark.parametrize(("impl", "path"), [("sdpa", "explicit"), ("eager", "eager")])
def test_report_shows_the_path_of_attention_sites(impl, path):
    model = build("gpt2", "causal-lm", impl)
    report = hf_sparseout.patch(model, SparseoutConfig(q=1.5))
    attention = [s for s in report.sites if s.kind == "attention"]
    assert attention and all(s.path == path for s in attention)
    assert all(s.path is None for s in report.sites if s.kind != "attention")
    table = report.to_table()
    assert table.splitlines()[0].split()[-2:] == ["path", "note"] and f" {path}" in table
    assert report.to_dict()["sites"][0].keys() >= {"path"}
    if impl == "sdpa":  # a training call records the path it took and why
        model.train()
        model(**batch(model), use_cache=False)
        site = model.get_submodule(attention[0].module)
        assert site.attention_path == (
            "explicit: not a CUDA tensor" if backend.triton_available() else "explicit: triton is not installed"
        )
    hf_sparseout.unpatch(model)


def test_no_path_column_without_patched_attention_sites():
    model = build("gpt2", "causal-lm", "sdpa")
    report = hf_sparseout.inspect(model, SparseoutConfig(q=1.5, attention="keep"))
    assert all(s.path is None for s in report.sites)
    assert "path" not in report.to_table().splitlines()[0].split()
