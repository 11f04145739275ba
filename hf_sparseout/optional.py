"""Optional dependencies, imported only by the feature that needs them.

``require(module, feature=..., install=...)`` imports ``module`` or raises
:class:`~hf_sparseout.errors.MissingDependencyError` naming the feature and the pip command, which the
CLI prints as ``Error: ...`` / ``Hint: ...`` (exit 2) instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hf_sparseout.errors import MissingDependencyError

MATPLOTLIB = "pip install 'matplotlib>=3.7'"
PEFT = "pip install 'hf-sparseout[peft]'"


def require(module: str, *, feature: str, install: str) -> ModuleType:
    """Import ``module`` (``"matplotlib"``, ``"peft"``, ...) for ``feature``; ``MissingDependencyError`` if absent.

    Args:
        module: the import name.
        feature: what needs it, for the message (``"finetune's plots"``).
        install: the command that installs it, for the hint.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{feature} needs the {module!r} package, which is not installed ({err})", install
        ) from err


def require_matplotlib(feature: str) -> ModuleType:
    """``matplotlib.pyplot`` on the headless Agg backend, for ``feature``."""
    matplotlib = require("matplotlib", feature=feature, install=MATPLOTLIB)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", feature=feature, install=MATPLOTLIB)
