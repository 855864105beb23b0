"""Per-layer (per-tensor) norm clipping: each gradient tensor is clipped to its own norm budget.

Rule (as in "LARS"-style layer-wise control, You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks", applied to clipping): ``g_t ← g_t · min(1, max_norm / (‖g_t‖_p + 1e-6))``
for each tensor t separately.
"""

from __future__ import annotations

from torch import Tensor

from gradscope.kernels.reference import clip_coef

from .backend import check_stats, measure, resolve
from .base import Clipper, tensor_stats
from .result import ClipResult


class LayerClipper(Clipper):
    """Clip every gradient tensor to ``max_norm``; ``coef`` holds one coefficient per tensor."""

    name = "layer"

    def __init__(
        self, max_norm: float = 1.0, norm_type: float = 2.0, backend: str = "auto", stats: str = "auto"
    ) -> None:
        self.max_norm, self.norm_type, self.backend = float(max_norm), float(norm_type), backend
        self.stats = check_stats(stats)

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        out = measure(grads, float("inf"), self.norm_type, which, self.stats)
        coef = clip_coef(out.norm, self.max_norm)
        act = ~(coef >= 1.0)
        if coef.device.type == "cpu":  # CPU: no sync; write only the tensors that clip
            for g, c, a in zip(grads, coef.unbind(), act.tolist(), strict=True):
                if a:
                    g.mul_(c)
        else:
            for g, c in zip(grads, coef.unbind(), strict=True):
                g.mul_(c.to(g.device))
        return ClipResult(out.total, coef, act.any(), tensor_stats(out), self.norm_type)
