"""One place for optional dependencies: availability checks and the install hint for each."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

_HINTS = {
    "triton": "pip install 'gradscope[triton]'  (or: pip install triton)",
    "transformers": "pip install 'gradscope[hf]'  (or: pip install transformers)",
    "tensorboard": "pip install 'gradscope[tensorboard]'  (or: pip install tensorboard)",
    "matplotlib": "pip install 'gradscope[plots]'  (or: pip install matplotlib)",
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
