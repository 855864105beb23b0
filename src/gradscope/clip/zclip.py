"""ZClip: clip gradient-norm spikes detected by a z-score against EMA statistics.

Kumar, Owen, Chowdhury & Güra 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training"; the rules
and defaults are the authors' ``zclip`` package (``zclip/zclip.py``, ``ZClip.step``). With ``n = ‖g_t‖``:

* **Warm-up** (the first ``warmup_steps`` calls): collect ``n``; torch's norm clip to ``max_grad_norm``
  (when not None). Then ``μ = mean``, ``σ² = var`` (population) of the collected norms.
* **Threshold** (``std = σ``): ``mode="zscore"`` (default) takes ``z = (n - μ) / (std + eps)`` and, when
  ``z > z_thresh``, ``clip_option="adaptive_scaling"`` (default, the paper's reciprocal rule)
  ``n* = (μ + z_thresh·std / (z / z_thresh)) · clip_factor``, or ``clip_option="mean"`` ``n* = μ``.
  ``mode="percentile"``: ``n* = μ + z_thresh·std`` when ``n`` exceeds it.
* **Clip**: ``limit = min(n* if spike else n, max_grad_norm)``; ``g ← g · limit / (n + 1e-6)`` when
  ``n > limit``.
* **Update** (skipped on a spike with ``skip_update_on_spike``): with ``v = n*`` on a spike, else ``n``:
  ``μ ← α μ + (1 - α) v``, then ``σ² ← α σ² + (1 - α) (v - μ)²`` with the new μ.

Departure (NaN robustness): a non-finite ``n`` leaves μ and σ² unchanged and is left out of the warm-up
statistics (the package would store it: a NaN poisons μ forever). State is device tensors plus a host
step count, so a step never reads the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradscope.kernels.reference import clip_coef

from .backend import check_stats, measure, resolve, scale_
from .base import Clipper, tensor_stats
from .result import ClipResult

MODES = ("zscore", "percentile")
CLIP_OPTIONS = ("adaptive_scaling", "mean")


class ZClip(Clipper):
    """Z-score spike clipping with EMA mean/variance of the global grad norm (the zclip package's rules)."""

    name = "zclip"

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        max_grad_norm: float | None = 1.0,
        eps: float = 1e-6,
        warmup_steps: int = 25,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
        norm_type: float = 2.0,
        backend: str = "auto",
        stats: str = "auto",
        warmup: int | None = None,
    ) -> None:
        warmup_steps = int(warmup if warmup is not None else warmup_steps)
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
        if mode.lower() not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if clip_option.lower() not in CLIP_OPTIONS:
            raise ValueError(f"clip_option must be one of {CLIP_OPTIONS}, not {clip_option!r}")
        self.alpha, self.z_thresh, self.eps = float(alpha), float(z_thresh), float(eps)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.warmup_steps, self.mode, self.clip_option = warmup_steps, mode.lower(), clip_option.lower()
        self.clip_factor, self.skip_update_on_spike = float(clip_factor), bool(skip_update_on_spike)
        self.norm_type, self.backend, self.stats = float(norm_type), backend, check_stats(stats)
        self._step = 0
        self._warm: Tensor | None = None
        self._mean: Tensor | None = None
        self._var: Tensor | None = None

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        limit = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        if self._step < self.warmup_steps:
            out = measure(grads, limit, self.norm_type, which, self.stats)
            self._collect(out.total)
            coef = out.coef
        else:
            out = measure(grads, float("inf"), self.norm_type, which, self.stats)
            coef = self._update(out.total)
        scale_(grads, coef, which)
        self._step += 1
        return ClipResult(out.total, coef, ~(coef >= 1.0), tensor_stats(out), self.norm_type)

    def _collect(self, n: Tensor) -> None:
        if self._warm is None:
            self._warm = torch.full((self.warmup_steps,), torch.nan, dtype=n.dtype, device=n.device)
        self._warm[self._step : self._step + 1].copy_(torch.where(torch.isfinite(n), n, torch.nan).reshape(1))
        if self._step == self.warmup_steps - 1:
            self._mean = torch.nanmean(self._warm)
            self._var = torch.nanmean((self._warm - self._mean) ** 2)

    def _threshold(self, n: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
        """(spike, n*) as the package's ``_compute_clip_val``."""
        if self.mode == "percentile":
            threshold = mean + self.z_thresh * std
            return n > threshold, threshold
        z = (n - mean) / (std + self.eps)
        if self.clip_option == "adaptive_scaling":
            eta = z / self.z_thresh  # the reciprocal rule: larger outliers get a lower threshold
            threshold = (mean + (self.z_thresh * std) / eta) * self.clip_factor
        else:
            threshold = mean
        return z > self.z_thresh, threshold

    def _update(self, n: Tensor) -> Tensor:
        mean, var, a = self._mean, self._var, self.alpha
        spike, threshold = self._threshold(n, mean, var.sqrt())
        value = torch.where(spike, threshold, n)
        limit = value if self.max_grad_norm is None else torch.clamp(value, max=self.max_grad_norm)
        coef = torch.where(n > limit, clip_coef(n, limit), torch.ones_like(n))
        new_mean = a * mean + (1 - a) * value
        new_var = a * var + (1 - a) * (value - new_mean) ** 2
        ok = torch.isfinite(n)
        if self.skip_update_on_spike:
            ok = ok & ~spike
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
