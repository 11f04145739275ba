"""`hf-sparseout env`: versions of the library and its stack, for bug reports."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import typer

from hf_sparseout.loading import MINILM_PACKAGE, minilm_path
from hf_sparseout_cli.options import FormatOpt, OutputFormat

_PACKAGES = ("hf-sparseout", "torch", "transformers", "accelerate", "datasets", "evaluate", "huggingface_hub", "typer")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def env(fmt: FormatOpt = OutputFormat.text) -> None:
    """Print the versions of hf-sparseout, Python, torch and the Hugging Face stack, and where the
    installed all-MiniLM-L6-v2 is (what --model minilm loads).

    Example: hf-sparseout env --format json
    """
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform()}
    info.update({name: _version(name) for name in _PACKAGES})
    info["cuda_available"] = str(torch.cuda.is_available())
    minilm = minilm_path()
    info["minilm"] = str(minilm) if minilm else f"not installed (pip install {MINILM_PACKAGE})"
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            typer.echo(f"- {key}: {value}")
