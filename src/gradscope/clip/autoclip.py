"""AutoClip: clip to a percentile of the history of gradient norms.

Seetharaman, Wichern, Pardo & Le Roux 2020, "AutoClip: Adaptive Gradient Clipping for Source
Separation Networks" (MLSP 2020): at step t, with h = {‖g_1‖, ..., ‖g_t‖} (the current norm
included), ``η_t = percentile_p(h)`` and ``g ← g · min(1, η_t / (‖g_t‖ + 1e-6))``.

Departures: the history is bounded (the last ``history`` norms, a ring buffer on the device) and
non-finite norms are kept out of it (stored as NaN and ignored by ``nanquantile``). The step count is
a host integer (one norm per call), so nothing is read back from the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.kernels.reference import clip_coef

from .backend import check_stats, measure, resolve, scale_
from .base import Clipper, tensor_stats
from .result import ClipResult


class AutoClip(Clipper):
    """Clip the global norm to the ``percentile``-th percentile (0-100) of the recent norms."""

    name = "autoclip"

    def __init__(
        self,
        percentile: float = 10.0,
        history: int = 1000,
        norm_type: float = 2.0,
        backend: str = "auto",
        stats: str = "auto",
    ) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        self.percentile, self.history = float(percentile), int(history)
        self.norm_type, self.backend, self.stats = float(norm_type), backend, check_stats(stats)
        self._buf: Tensor | None = None
        self._step = 0

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        out = measure(grads, float("inf"), self.norm_type, which, self.stats)
        total = out.total
        if self._buf is None:
            self._buf = torch.full((self.history,), torch.nan, dtype=torch.float32, device=total.device)
        slot = self._step % self.history
        self._buf[slot : slot + 1].copy_(torch.where(torch.isfinite(total), total, torch.nan).reshape(1))
        self._step += 1
        seen = self._buf[: min(self._step, self.history)]
        threshold = torch.nanquantile(seen, self.percentile / 100.0)
        coef = clip_coef(total, threshold)
        scale_(grads, coef, which)
        return ClipResult(total, coef, ~(coef >= 1.0), tensor_stats(out))

    def state_dict(self) -> dict[str, Any]:
        buf = None if self._buf is None else self._buf.clone()
        return {"step": self._step, "history": self.history, "buf": buf}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["history"] != self.history:
            raise ValueError(f"state has history={state['history']}, this AutoClip has {self.history}")
        self._step = int(state["step"])
        self._buf = None if state["buf"] is None else state["buf"].clone()
