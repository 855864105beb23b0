"""Adaptive gradient clipping (AGC), unit-wise.

Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition Without
Normalization" (NFNets), eq. 3: for each unit i (a row of a Linear weight, a filter of a conv),

    G_i ← λ · max(‖W_i‖, ε) / ‖G_i‖ · G_i    if ‖G_i‖ / max(‖W_i‖, ε) > λ,

with ``λ = clipping`` (timm's name ``clip_factor`` is accepted) and ``ε = 1e-3``. As in the authors'
code (deepmind-research ``nfnets/agc_optax.py``: ``unitwise_norm`` and ``my_clip``) and timm
(``timm/utils/agc.py``): a tensor that squeezes to a scalar or a vector (a bias, a norm gain, a [out, 1]
weight) is ONE unit; otherwise a unit is everything but dim 0 (torch keeps the output dim first). The
clip is ``where(‖G_i‖ < λ·max(‖W_i‖, ε), G_i, G_i · λ·max(‖W_i‖, ε) / max(‖G_i‖, 1e-6))``, op for op
as timm computes it, so fp32 results are bitwise equal. Departures: timm takes a [out, 1] weight's rows
as units (the authors' code, followed here, squeezes it to one vector); bf16/fp16 norms are taken in
fp32 (timm keeps the parameter's dtype). The paper does not clip the final classifier layer: pass only
the parameters to clip.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Clipper
from .result import ClipResult, TensorStats


def unitwise_norm(x: Tensor, norm_type: float = 2.0) -> Tensor:
    """Norm of each output unit, broadcastable to ``x`` (NFNets' ``unitwise_norm`` in torch's layout)."""
    if sum(d != 1 for d in x.shape) <= 1:  # squeezes to a scalar or a vector: one unit
        return torch.linalg.vector_norm(x, norm_type)
    return torch.linalg.vector_norm(x, norm_type, dim=tuple(range(1, x.dim())), keepdim=True)


class AGC(Clipper):
    """Unit-wise AGC; ``coef`` holds, per tensor, the smallest unit coefficient applied."""

    name = "agc"

    def __init__(
        self, clipping: float = 0.01, eps: float = 1e-3, norm_type: float = 2.0, *, clip_factor: float | None = None
    ) -> None:
        self.clipping = float(clip_factor if clip_factor is not None else clipping)
        self.eps, self.norm_type = float(eps), float(norm_type)

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        norms, coefs = [], []
        for p in params:
            g = p.grad
            if g is None:
                continue
            w, gd = p.detach(), g.detach()
            if gd.dtype in (torch.float16, torch.bfloat16):
                w, gd = w.float(), gd.float()
            max_norm = unitwise_norm(w, self.norm_type).clamp_(min=self.eps).mul_(self.clipping)
            grad_norm = unitwise_norm(gd, self.norm_type)
            ratio = max_norm / grad_norm.clamp(min=1e-6)
            keep = grad_norm < max_norm
            unit = torch.where(keep, torch.ones_like(ratio), ratio)
            norms.append(torch.linalg.vector_norm(grad_norm, self.norm_type).to(torch.float32))
            coefs.append(unit.amin().to(torch.float32) if unit.numel() else unit.new_ones((), dtype=torch.float32))
            if g.device.type != "cpu" or not bool(keep.all()):  # CPU: no sync; write only on clip
                g.copy_(torch.where(keep, gd, gd * ratio))
        norm = torch.stack(norms)
        coef = torch.stack(coefs)
        total = torch.linalg.vector_norm(norm, self.norm_type)
        return ClipResult(total, coef, (coef < 1).any(), TensorStats(norm), self.norm_type)
