"""AMP: seeing a torch.amp.GradScaler's loss scale and skipped steps without syncing.

The Scope divides gradient statistics by the scale in force at backward time (so they are
unscaled), and wraps ``scaler.update`` on the instance: update runs once per iteration, after
``scaler.step`` has decided whether to skip, so the Scope can close a skipped step itself.
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
