"""Value clipping: clamp every gradient element to ``[-clip_value, clip_value]``.

Rule (Mikolov 2012, "Statistical Language Models Based on Neural Networks", ch. 3; torch's
``clip_grad_value_``): ``g_i ← max(-c, min(c, g_i))``. The direction of ``g`` changes when it clips.
As in torch, a NaN element stays NaN and the tensor's other elements are still clamped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import measure, resolve
from .base import Clipper, tensor_stats
from .result import ClipResult


class ValueClipper(Clipper):
    """Clamp elements to ``±clip_value``; ``coef`` is 1 (no single scale), ``clipped`` any max|g| > c."""

    name = "value"

    def __init__(self, clip_value: float = 1.0, backend: str = "auto") -> None:
        self.clip_value, self.backend = float(clip_value), backend

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        out = measure(grads, float("inf"), 2.0, resolve(self.backend, grads), stats="full")  # needs max|g|
        over = ~(out.maxabs <= self.clip_value)  # NaN max |g| (a NaN element): clamp the rest as torch does
        if out.maxabs.device.type == "cpu":  # CPU: reading ``over`` costs no sync; clamp only those
            todo = [g for g, o in zip(grads, over.tolist(), strict=True) if o]
        else:
            todo = grads
        if todo:
            torch._foreach_clamp_min_(todo, -self.clip_value)
            torch._foreach_clamp_max_(todo, self.clip_value)
        one = torch.ones((), dtype=torch.float32, device=out.total.device)
        return ClipResult(out.total, one, over.any(), tensor_stats(out))
