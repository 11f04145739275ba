"""Stage (a) of the GPU check: what the figures were measured on (GPU, driver, CUDA, torch, triton, transformers)."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import subprocess
from typing import Any

import torch

from bench.gpu_check.record import add_stage_args, write_json


def build_parser() -> argparse.ArgumentParser:
    """Arguments: ``--out``, ``--time-limit-s``."""
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check.env_stage", description=__doc__)
    add_stage_args(ap)
    return ap


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (``None`` without it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment() -> dict[str, Any]:
    """The machine and versions; ``cuda`` is ``False`` (and the GPU fields absent) on a machine without one."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "datasets": _version("datasets"),
        "hf_sparseout": _version("hf-sparseout"),
        "cuda": torch.cuda.is_available(),
    }
    if env["cuda"]:
        props = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "memory_GiB": round(props.total_memory / 2**30, 1),
            "driver": _driver(),
        }
    return env


def main(argv: list[str] | None = None) -> None:
    """Write ``env.json``."""
    args = build_parser().parse_args(argv)
    env = environment()
    ok = bool(env["cuda"] and env["triton"])
    gpu = env.get("gpu", "no CUDA device")
    summary = f"{gpu}, driver {env.get('driver')}, torch {env['torch']}, triton {env['triton']}"
    summary += f", transformers {env['transformers']}"
    write_json(args.out / "env.json", {"environment": env, "verdict": "pass" if ok else "FAIL", "summary": summary})
    print(summary)


if __name__ == "__main__":
    main()
