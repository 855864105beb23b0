"""Adaptive gradient clipping (AGC), unit-wise.

Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
Normalization" (NFNets), eq. 3: for each unit i (a row of a Linear weight, a filter of a conv),

    G_i ← λ · max(‖W_i‖, ε) / ‖G_i‖ · G_i    if ‖G_i‖ / max(‖W_i‖, ε) > λ,

with ``λ = clipping`` and ``ε = 1e-3``; vectors and scalars (biases, gains) are clipped per element.
The paper does not clip the final classifier layer: pass only the parameters to clip.
Unit norms come from ``functional.unitwise_norm``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradscope.functional import unitwise_norm

from .base import Clipper
from .result import ClipResult, TensorStats


class AGC(Clipper):
    """Unit-wise AGC; ``coef`` holds, per tensor, the smallest unit coefficient applied."""

    name = "agc"

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3) -> None:
        self.clipping, self.eps = float(clipping), float(eps)

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        norms, coefs = [], []
        for p in params:
            g = p.grad
            if g is None:
                continue
            w_norm = unitwise_norm(p.detach().float()).clamp_min(self.eps)
            g_norm = unitwise_norm(g.float())
            limit = self.clipping * w_norm
            unit = torch.where(g_norm > limit, limit / g_norm, torch.ones_like(g_norm))
            norms.append(torch.linalg.vector_norm(g_norm))
            coefs.append(unit.amin() if unit.numel() else unit.new_ones(()))
            if g.device.type != "cpu" or bool((unit < 1).any()):  # CPU: no sync, write only on clip
                g.mul_(unit)
        norm = torch.stack(norms).to(torch.float32)
        coef = torch.stack(coefs).to(torch.float32)
        total = torch.linalg.vector_norm(norm)
        return ClipResult(total, coef, (coef < 1).any(), TensorStats(norm))
