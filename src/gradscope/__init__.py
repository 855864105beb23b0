"""gradscope: gradient-health diagnostics and profiling for PyTorch.

    with gradscope.watch(model, optimizer, log_dir="runs/exp1") as scope:
        ...  # train as usual; scope.log(loss=loss) adds per-step scalars
    run = gradscope.load_run("runs/exp1")
    findings = gradscope.diagnose(run)   # [Finding], most severe first

The names below are imported on first use, so reading runs (``gradscope analyze``) does not pay for
importing torch; ``watch``/``Scope``/``clip`` import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["HealthError", "Run", "RunError", "Scope", "clip", "diagnose", "load_run", "watch", "__version__"]

_LAZY = {
    "HealthError": "gradscope.diagnose.live",
    "Run": "gradscope.run.reader",
    "RunError": "gradscope.run.reader",
    "load_run": "gradscope.run.reader",
    "Scope": "gradscope.scope.core",
    "watch": "gradscope.scope.core",
}

if TYPE_CHECKING:  # pragma: no cover
    from gradscope import clip
    from gradscope.diagnose import diagnose
    from gradscope.diagnose.live import HealthError
    from gradscope.run.reader import Run, RunError, load_run
    from gradscope.scope.core import Scope, watch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in ("clip", "diagnose"):  # gradscope.diagnose(run): the package is callable
        value = importlib.import_module(f"gradscope.{name}")
    else:
        raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
