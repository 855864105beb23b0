"""One place for optional dependencies: availability checks and the install hint for each."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Each line works as written (the extras of a gradscope checkout, `pip install -e '.[hf]'`, hold the same).
_HINTS = {
    "triton": "pip install triton",
    "transformers": "pip install transformers accelerate",
    "accelerate": "pip install accelerate",
    "tensorboard": "pip install tensorboard",
    "matplotlib": "pip install matplotlib",
    "lightning": ("pip install --no-deps lightning pytorch-lightning lightning-utilities torchmetrics  "
                  "(--no-deps keeps your torch)"),
}


class MissingDependencyError(ImportError):
    """An optional dependency a feature needs is not installed; the message says what to install."""


def available(name: str) -> bool:
    """Whether the optional module ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(name: str, feature: str) -> ModuleType:
    """Import optional module ``name`` for ``feature`` or raise a MissingDependencyError with the fix."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        hint = _HINTS.get(name, f"pip install {name}")
        raise MissingDependencyError(f"{feature} needs {name}, which is not installed: {hint}") from exc
