"""ZClip: clip gradient-norm spikes detected by a z-score against EMA statistics.

Kumar, Owen, Chowdhury & Güra 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training".
For the first ``warmup`` steps nothing is clipped and norms are collected; then
``μ = mean``, ``σ² = var`` (population) of them. At each later step, with ``n = ‖g_t‖``:

    z = (n - μ) / (σ + eps);   if z > z_thresh:  n* = μ + z_thresh · σ,  g ← g · min(1, n* / (n + 1e-6))
    else n* = n;   μ ← α μ + (1 - α) n*;   σ² ← α σ² + (1 - α) (n* - μ)²   (with the new μ)

This is the paper's fixed "mean + z_thresh·std" threshold (its "percentile" mode); the statistics are
updated with the clipped norm n*. Non-finite norms leave μ and σ² unchanged. State is device tensors
plus a host step count, so a step never reads the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.kernels.reference import clip_coef

from .backend import check_stats, measure, resolve, scale_
from .base import Clipper, tensor_stats
from .result import ClipResult


class ZClip(Clipper):
    """Z-score spike clipping with EMA mean/variance of the global grad norm."""

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        warmup: int = 25,
        eps: float = 1e-6,
        norm_type: float = 2.0,
        backend: str = "auto",
        stats: str = "auto",
    ) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.alpha, self.z_thresh, self.warmup, self.eps = float(alpha), float(z_thresh), int(warmup), eps
        self.norm_type, self.backend, self.stats = float(norm_type), backend, check_stats(stats)
        self._step = 0
        self._warm: Tensor | None = None
        self._mean: Tensor | None = None
        self._var: Tensor | None = None

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        out = measure(grads, float("inf"), self.norm_type, which, self.stats)
        n = out.total
        if self._step < self.warmup:
            coef = self._collect(n)
        else:
            coef = self._update(n)
            scale_(grads, coef, which)
        self._step += 1
        return ClipResult(n, coef, ~(coef >= 1.0), tensor_stats(out))

    def _collect(self, n: Tensor) -> Tensor:
        if self._warm is None:
            self._warm = torch.full((self.warmup,), torch.nan, dtype=torch.float32, device=n.device)
        self._warm[self._step : self._step + 1].copy_(torch.where(torch.isfinite(n), n, torch.nan).reshape(1))
        if self._step == self.warmup - 1:
            self._mean = torch.nanmean(self._warm)
            self._var = torch.nanmean((self._warm - self._mean) ** 2)
        return torch.ones((), dtype=torch.float32, device=n.device)

    def _update(self, n: Tensor) -> Tensor:
        mean, var, a = self._mean, self._var, self.alpha
        std = var.sqrt()
        z = (n - mean) / (std + self.eps)
        spike = z > self.z_thresh
        threshold = mean + self.z_thresh * std
        coef = torch.where(spike, clip_coef(n, threshold), torch.ones_like(n))
        eff = torch.where(spike, threshold, n)
        new_mean = a * mean + (1 - a) * eff
        new_var = a * var + (1 - a) * (eff - new_mean) ** 2
        ok = torch.isfinite(n)
        self._mean = torch.where(ok, new_mean, mean)
        self._var = torch.where(ok, new_var, var)
        return coef

    def state_dict(self) -> dict[str, Any]:
        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return {"step": self._step, "warm": c(self._warm), "mean": c(self._mean), "var": c(self._var)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        for key in ("warm", "mean", "var"):
            value = state[key]
            setattr(self, f"_{key}", None if value is None else value.clone())
