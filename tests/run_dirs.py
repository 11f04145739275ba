"""A finetune-like run directory for the model-card and push tests (no training: a patched tiny model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from architectures import build

import hf_sparseout
from hf_sparseout import SparseoutConfig
from hf_sparseout.hub import save_pretrained
from hf_sparseout.hub.card import RUN_FILE

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # the card only links the file


def write_run_dir(
    directory: Path,
    task: str = "causal-lm",
    base_model: str | None = "openai-community/gpt2",
    baseline: bool = True,
    q: float = 1.5,
) -> dict:
    """A finetune-like output directory: a patched tiny model, the run file, plots, metrics, training state.

    The run file follows the finetune contract (``hf_sparseout_run.json``); its sites come from
    the real patch report.
    """
    head = "causal-lm" if task == "causal-lm" else "seq-cls"
    model = build("gpt2", head, "eager")
    config = SparseoutConfig(q=q, attention="keep")
    report = hf_sparseout.patch(model, config)
    save_pretrained(model, directory)
    if task == "causal-lm":
        results = {"eval_loss": 3.2189, "perplexity": 25.0054, "hoyer": 0.4127}
        base_results = {"eval_loss": 3.3112, "perplexity": 27.4196, "hoyer": 0.2981}
    else:
        results = {"eval_loss": 0.4012, "accuracy": 0.8716, "f1_macro": 0.8694, "hoyer": 0.3815}
        base_results = {"eval_loss": 0.4233, "accuracy": 0.8589, "f1_macro": 0.8571, "hoyer": 0.2702}
    run = {
        "task": task,
        "base_model": base_model,
        "datasets": ["ptb_text_only"] if task == "causal-lm" else ["stanfordnlp/sst2"],
        "license": "mit",
        "sparseout": config.to_dict(),
        "sites": report.to_dict()["sites"],
        "hyperparameters": {
            "learning_rate": 0.0005,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "max_steps": 200,
            "block_size": 128,
            "seed": 42,
            "mixed_precision": "no",
            "report_to": ["none"],
            "logging_dir": os.path.join(os.path.expanduser("~"), "runs", "logs"),
            "cache": "/home/alice/.cache/data",
            "hub_token": "hf_should_never_appear",
        },
        "results": {"sparseout": results, "baseline": base_results if baseline else None},
        "plots": {
            "training_loss": "training_loss.png",
            "eval_metric": "eval_metric.png",
            "per_site_hoyer": "sparsity_per_site.png",
        },
    }
    (directory / RUN_FILE).write_text(json.dumps(run, indent=2))
    for name in ("training_loss.png", "sparsity_per_site.png"):  # eval_metric.png is missing on purpose
        (directory / name).write_bytes(PNG)
    (directory / "metrics.json").write_text(json.dumps({"args": {"output_dir": str(directory)}}))
    (directory / "report.md").write_text(f"# run\n\noutput: {directory}\n")
    state = directory / "checkpoints" / "sparseout" / "step-2"
    state.mkdir(parents=True)
    (state / "optimizer.bin").write_bytes(b"\x00" * 64)
    (directory / "baseline").mkdir()
    (directory / "baseline" / "config.json").write_text("{}")
    return run
