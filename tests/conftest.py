"""Shared fixtures: small models, a no-host-sync guard, deterministic seeds."""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import gradscope

# The checkout's top-level kernels/ (packaged as gradscope.kernels) would shadow Hugging Face's `kernels`
# package, which transformers imports when installed, whenever the checkout root is on sys.path
# (`python -m pytest` from the root puts it there). gradscope itself is imported from its installation.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

PKG_DIR = str(Path(gradscope.__file__).parent)
# gradscope.kernels is packaged from the top-level kernels/: an editable install keeps it outside PKG_DIR
PKG_DIRS = (PKG_DIR, str(Path(importlib.util.find_spec("gradscope.kernels").origin).parent))

_SYNC_METHODS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
}


_FROM_HOST = {torch.tensor, torch.as_tensor, torch.asarray, torch.Tensor.new_tensor}
_PYTHON_DATA = (bool, int, float, complex, list, tuple)


def _python_setitem(func, args) -> bool:
    """``t[i] = 0.5``: on an accelerator the Python value becomes a host tensor copied to the device."""
    return func is torch.Tensor.__setitem__ and len(args) >= 3 and isinstance(args[2], _PYTHON_DATA)


class NoHostSync(TorchFunctionMode):
    """Fails on any host-syncing tensor call made from gradscope's code outside a flush.

    Calls made by torch or the test itself are allowed; a call is attributed to gradscope when a
    frame of the gradscope package is on the stack. ``scope._in_flush`` marks the one allowed place.
    Host-to-device copies of Python data wait for the queued work on an accelerator: tensors built
    from Python data (``torch.tensor``, ``as_tensor``, ``asarray``, ``new_tensor``) and Python scalars
    written into a tensor (``t[i] = 0.5``). They are allowed while the first two steps set up
    caches, not after; on the CPU they are plain writes, so the guard is what sees them there.
    """

    def __init__(self, scope: gradscope.Scope) -> None:
        super().__init__()
        self.scope = scope
        self.violations: list[str] = []
        self.checked = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        steady = self.scope.step_index >= 2
        if func in _SYNC_METHODS or getattr(func, "__name__", "") in ("item", "tolist", "numpy") or (
                steady and (func in _FROM_HOST or _python_setitem(func, args))):
            self.checked += 1
            stack = traceback.extract_stack()
            ours = [f for f in stack if f.filename.startswith(PKG_DIRS)]
            if ours and not self.scope._in_flush:
                self.violations.append(f"{func.__name__} from {ours[-1].filename}:{ours[-1].lineno}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_sync():
    return NoHostSync


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


os.environ.setdefault("HF_HUB_OFFLINE", "1")
