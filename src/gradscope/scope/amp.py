"""AMP: seeing a torch.amp.GradScaler's loss scale and skipped steps without syncing.

The Scope divides gradient statistics by the scale in force at backward time (so they are
unscaled), and wraps ``scaler.update`` on the instance: update runs once per iteration, after
``scaler.step`` has decided whether to skip, so the Scope can close a skipped step itself.

A GradScaler the user forgot to pass (``watch(model, opt)`` in an AMP loop) is found where it steps
the watched optimizer: while such a Scope is open, ``GradScaler.step`` is wrapped (on the class,
restored when the last one closes) to tell it which scaler steps which optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def inv_scale(scaler: Any) -> Tensor | None:
    """1 / the current loss scale as a device tensor, or None when the scaler is off or unused."""
    if scaler is None or not scaler.is_enabled():
        return None
    scale = getattr(scaler, "_scale", None)
    return None if scale is None else scale.float().reciprocal()  # scales are powers of 2: exact


def found_inf(scaler: Any, optimizers: list[torch.optim.Optimizer]) -> Tensor | None:
    """Whether any optimizer's unscale found Inf/NaN this iteration (device 0-d float), or None."""
    states = getattr(scaler, "_per_optimizer_states", {})
    flags = [f for opt in optimizers for f in states.get(id(opt), {}).get("found_inf_per_device", {}).values()]
    if not flags:
        return None
    return (torch.stack([f.to(flags[0].device).reshape(()) for f in flags]).sum() > 0).float()


class ScalerPatch:
    """Calls ``on_update(scaler)`` before each ``scaler.update()``; ``remove()`` restores the method."""

    def __init__(self, scaler: Any, on_update: Callable[[Any], None]) -> None:
        if not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"watch(scaler=...) needs a torch.amp.GradScaler, got {type(scaler).__name__}")
        self.scaler = scaler
        original = scaler.update

        def update(new_scale: Any = None) -> None:
            on_update(scaler)
            original(new_scale)

        scaler.update = update

    def remove(self) -> None:
        self.scaler.__dict__.pop("update", None)


_step_watchers: list[Callable[[Any, Any], None]] = []
_original_step: Callable[..., Any] | None = None


def _watched_step(self: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
    original = _original_step  # a watcher may remove itself (and with the last, the patch) below
    assert original is not None
    for on_step in list(_step_watchers):
        on_step(self, optimizer)
    return original(self, optimizer, *args, **kwargs)


class ScalerStepWatch:
    """Calls ``on_step(scaler, optimizer)`` at every ``GradScaler.step`` until ``remove()``."""

    def __init__(self, on_step: Callable[[Any, Any], None]) -> None:
        global _original_step
        self.on_step = on_step
        if not _step_watchers:
            _original_step = torch.amp.GradScaler.step
            torch.amp.GradScaler.step = _watched_step  # type: ignore[method-assign]
        _step_watchers.append(on_step)

    def remove(self) -> None:
        global _original_step
        if self.on_step in _step_watchers:
            _step_watchers.remove(self.on_step)
            if not _step_watchers and _original_step is not None:
                torch.amp.GradScaler.step = _original_step  # type: ignore[method-assign]
                _original_step = None
