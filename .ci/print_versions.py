"""Print one line with the installed versions of the project's direct dependencies (CI logs)."""

import contextlib
import importlib.metadata as md
import sys

NAMES = [
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "evaluate",
    "huggingface_hub",
    "peft",
    "trl",
    "typer",
    "rich",
    "matplotlib",
    "safetensors",
    "numpy",
    "jinja2",
    "scipy",
    "hypothesis",
    "pytest",
]

found = []
for name in NAMES:
    with contextlib.suppress(md.PackageNotFoundError):
        found.append(f"{name} {md.version(name)}")
label = sys.argv[1] if len(sys.argv) > 1 else "environment"
print(f"{label}: " + ", ".join(found))
