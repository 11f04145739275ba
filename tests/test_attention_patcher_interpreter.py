"""The patcher's SDPA redirection through the flash kernel equals the explicit path, in Triton's interpreter.

A patched tiny GPT-2 (padding mask) and a tiny Llama (GQA, causal) train one step twice on the CPU under
``TRITON_INTERPRET=1``: once with attention sites on the flash kernel, once on the explicit path (scores,
softmax, the site's module, matmul). To run the CUDA-only dispatch on CPU tensors the worker (a subprocess,
this file as a script) replaces four things: the "is it CUDA" checks of the flash path and of the op's backend
(so both use Triton), ``torch.cuda.device`` (a no-op), and the Philox source (a counter, reset before each
run). Both paths then draw their masks from the same Philox stream with the same ``(seed, ctr)`` per call,
the flash kernel by design uses the element-wise kernel's mask layout on the (B, H, M, N) probabilities, so
the two runs must agree to float32 rounding: outputs, loss and every parameter gradient.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_reference import tiny_attention_models

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="triton not installed (pip install 'hf-sparseout[triton]')"),
    pytest.mark.slow,  # two training steps in a subprocess under TRITON_INTERPRET=1
]

SEED = 31337


def worker(path: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import contextlib
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hf_sparseout
    from hf_sparseout.kernels import attention_op, sparseout_op
    from hf_sparseout.ops import backend

    counter = [0]

    def next_philox(device):
        counter[0] += 1
        return SEED, counter[0]

    sparseout_op.next_philox = next_philox
    attention_op._on_cuda = lambda t: True
    backend.use_triton = lambda x: x.dtype in backend.TRITON_DTYPES
    torch.cuda.device = lambda device: contextlib.nullcontext()

    res = {}
    for name, (model, inputs) in tiny_attention_models().items():
        hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5))
        sites = {n: m for n, m in model.named_modules() if isinstance(m, hf_sparseout.Sparseout)}
        model.train()
        runs = {}
        for path_name, enabled, start in (("flash", True, 0), ("explicit", False, 0), ("flash_other_masks", True, 100)):
            attention_op.set_flash_enabled(enabled)
            counter[0] = start
            model.zero_grad()
            out = model(**inputs)
            out.loss.backward()
            runs[path_name] = {
                "logits": out.logits.detach(),
                "loss": out.loss.detach(),
                "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                "paths": {n: getattr(m, "attention_path", None) for n, m in sites.items()},
                "calls": counter[0] - start,
            }
        attention_op.set_flash_enabled(True)
        res[name] = runs
    torch.save(res, path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("attn_patch") / "res.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), str(path)], check=True, env=env, timeout=600)
    return torch.load(path, weights_only=False)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_flash_path_equals_explicit_path_in_a_training_step(runs, name):
    flash, explicit = runs[name]["flash"], runs[name]["explicit"]
    attention = [n for n, p in flash["paths"].items() if p is not None]
    assert attention, "no attention site went through the SDPA redirection"
    assert all(flash["paths"][n] == "flash" for n in attention), flash["paths"]
    assert all(explicit["paths"][n].startswith("explicit: flash path disabled") for n in attention)
    assert flash["calls"] == explicit["calls"] > 0  # the same Philox draws, site by site
    torch.testing.assert_close(flash["logits"], explicit["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flash["loss"], explicit["loss"], rtol=1e-6, atol=1e-6)
    assert flash["grads"].keys() == explicit["grads"].keys() and flash["grads"]
    for n, g in flash["grads"].items():  # float32 sums in another order (tiles vs matmul): ~1e-5 of the scale
        want = explicit["grads"][n]
        torch.testing.assert_close(g, want, rtol=1e-4, atol=max(1e-6, 2e-5 * want.abs().max().item()), msg=n)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_the_comparison_has_teeth(runs, name):
    """Other Philox counters (other masks) give another step: the runs agree because their masks agree."""
    flash, other = runs[name]["flash"], runs[name]["flash_other_masks"]
    assert (flash["logits"] - other["logits"]).abs().max() > 1e-3
    assert flash["loss"].isfinite() and other["loss"].isfinite()


if __name__ == "__main__":
    worker(sys.argv[1])
