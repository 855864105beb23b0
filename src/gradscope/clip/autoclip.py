"""AutoClip: clip to a quantile of the history of gradient norms.

Seetharaman, Wichern, Pardo & Le Roux 2020, "AutoClip: Adaptive Gradient Clipping for Source
Separation Networks" (MLSP 2020). Two spellings of one rule:

* **The paper's** (default, ``global_threshold=True, include_current=True``, as the authors' code):
  at step t, with h = {‖g_1‖, ..., ‖g_t‖} (the current norm included), ``η_t = percentile_p(h)`` and
  ``g ← g · min(1, η_t / (‖g_t‖ + 1e-6))`` on the global norm.
* **The ``autoclip`` package's** ``QuantileClip`` (``quantile`` in [0, 1], ``history_length``,
  ``global_threshold=False`` per parameter by default): the threshold is the quantile of the norms seen
  BEFORE this step (none at the first step: no clip), each tensor against its own history unless
  ``global_threshold``; pass ``include_current=False`` for it. Quantiles interpolate linearly (torch).

Departures: the history is bounded (the last ``history`` norms, a ring buffer on the device) and
non-finite norms are kept out of it (stored as NaN and ignored by ``nanquantile``; the package would
store them and its threshold would stay NaN). The step count is a host integer, so nothing is read back
from the device.
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
    """Clip to the ``percentile``-th percentile (or the ``quantile``) of recent norms; global or per tensor."""

    name = "autoclip"

    def __init__(
        self,
        percentile: float = 10.0,
        history: int = 1000,
        norm_type: float = 2.0,
        backend: str = "auto",
        stats: str = "auto",
        *,
        quantile: float | None = None,
        history_length: int | None = None,
        global_threshold: bool = True,
        include_current: bool = True,
    ) -> None:
        q = float(quantile) if quantile is not None else float(percentile) / 100.0
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1] (percentile in [0, 100]), got {q}")
        self.quantile, self.history = q, int(history_length if history_length is not None else history)
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        self.global_threshold, self.include_current = bool(global_threshold), bool(include_current)
        self.norm_type, self.backend, self.stats = float(norm_type), backend, check_stats(stats)
        self._buf: Tensor | None = None
        self._step = 0

    @property
    def percentile(self) -> float:
        return self.quantile * 100.0

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        out = measure(grads, float("inf"), self.norm_type, which, self.stats)
        norms = out.total.reshape(1) if self.global_threshold else out.norm  # [1] or [T]
        if self._buf is None:
            self._buf = torch.full((norms.numel(), self.history), torch.nan, dtype=norms.dtype, device=norms.device)
        elif self._buf.shape[0] != norms.numel():
            raise ValueError(
                f"this AutoClip keeps a history for {self._buf.shape[0]} tensors, got {norms.numel()} gradients; "
                "use one AutoClip per parameter list"
            )
        if self.include_current:
            self._push(norms)
        seen = self._buf[:, : min(self._step + int(self.include_current), self.history)]
        if seen.shape[1]:
            threshold = torch.nanquantile(seen, self.quantile, dim=1)
            threshold = torch.where(threshold.isnan(), torch.inf, threshold)  # no finite history yet: no clip
        else:
            threshold = torch.full_like(norms, torch.inf)
        if not self.include_current:
            self._push(norms)
        self._step += 1
        coef = clip_coef(norms, threshold)
        if self.global_threshold:
            coef = coef.reshape(())
            scale_(grads, coef, which)
        elif coef.device.type == "cpu":  # CPU: no sync; write only the tensors that clip
            for g, c, a in zip(grads, coef.unbind(), (coef < 1.0).tolist(), strict=True):
                if a:
                    g.mul_(c)
        else:
            for g, c in zip(grads, coef.unbind(), strict=True):
                g.mul_(c.to(g.device))
        return ClipResult(out.total, coef, ~(coef >= 1.0).all(), tensor_stats(out), self.norm_type)

    def _push(self, norms: Tensor) -> None:
        slot = self._step % self.history
        self._buf[:, slot].copy_(torch.where(torch.isfinite(norms), norms, torch.nan))

    def state_dict(self) -> dict[str, Any]:
        buf = None if self._buf is None else self._buf.clone()
        return {"step": self._step, "history": self.history, "buf": buf}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["history"] != self.history:
            raise ValueError(f"state has history={state['history']}, this AutoClip has {self.history}")
        self._step = int(state["step"])
        buf = state["buf"]
        self._buf = None if buf is None else (buf.clone() if buf.dim() == 2 else buf.clone().reshape(1, -1))
