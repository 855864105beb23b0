"""Pure statistics maths, the eager reference for everything gradscope measures.

No state, no gradscope imports. Every function here runs on the tensors' own device and returns
device tensors: nothing calls ``.item()`` or branches on a device value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

# Activation statistics accumulated per module call, in this column order (see activation_sums).
ACT_SUM_FIELDS = ("count", "sum", "sumsq", "zeros", "nonfinite", "saturated")
ACT_N = len(ACT_SUM_FIELDS)

# |y - centre| > half_width * SATURATION_MARGIN counts as saturated: within 1 % of the bound.
SATURATION_MARGIN = 0.98
# Module types with bounded outputs: (centre, half width of the output range).
BOUNDED_RANGES: dict[str, tuple[float, float]] = {
    "Sigmoid": (0.5, 0.5),
    "Hardsigmoid": (0.5, 0.5),
    "Tanh": (0.0, 1.0),
    "Hardtanh": (0.0, 1.0),
    "Softsign": (0.0, 1.0),
}
# Module types whose units can die: a unit with no positive output has zero gradient.
DEAD_UNIT_TYPES = frozenset({"ReLU", "ReLU6", "Threshold"})


def _stat_dtype(device: torch.device) -> torch.dtype:
    # float64 where the device has it: sums of squares over millions of activations lose digits in fp32.
    return torch.float32 if device.type == "mps" else torch.float64


def grad_stats(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor L2 norm, max |x| and non-finite count, each a float32 vector on the first tensor's device.

    Tensors are grouped by (device, dtype) so each group is one ``_foreach_norm`` call, as torch's
    ``clip_grad_norm_`` does; norms are accumulated in fp32 even for bf16/fp16 tensors.
    """
    n = len(tensors)
    if n == 0:
        empty = torch.empty(0, dtype=torch.float32)
        return empty, empty.clone(), empty.clone()
    out_device = tensors[0].device
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    norms: list[Tensor | None] = [None] * n
    maxes: list[Tensor | None] = [None] * n
    for (_, dtype), idx in groups.items():
        group = [tensors[i] for i in idx]
        kwargs = {"dtype": torch.float32} if dtype in (torch.float16, torch.bfloat16) else {}
        g_norm = torch._foreach_norm(group, 2.0, **kwargs)
        g_max = torch._foreach_norm(group, float("inf"), **kwargs)
        for j, i in enumerate(idx):
            norms[i], maxes[i] = g_norm[j], g_max[j]
    norm = torch.stack([t.to(out_device, torch.float32) for t in norms])  # type: ignore[union-attr]
    maxabs = torch.stack([t.to(out_device, torch.float32) for t in maxes])  # type: ignore[union-attr]
    finite = torch.stack([torch.isfinite(t).sum().to(out_device) for t in tensors])
    numel = torch.tensor([t.numel() for t in tensors], device=out_device)
    return norm, maxabs, (numel - finite).to(torch.float32)


def total_norm(norms: Tensor, norm_type: float = 2.0) -> Tensor:
    """The global norm from per-tensor norms: ``vector_norm(norms, norm_type)``, as torch computes it."""
    if norms.numel() == 0:
        return torch.zeros((), dtype=norms.dtype, device=norms.device)
    return torch.linalg.vector_norm(norms, norm_type)


def _unit_dims(y: Tensor) -> tuple[int, ...]:
    """Dimensions reduced to get one value per unit: channels (dim 1) for NCHW-like, features (last) else."""
    if y.dim() >= 4:
        return (0, *range(2, y.dim()))
    return tuple(range(y.dim() - 1))


def unit_active(y: Tensor) -> Tensor:
    """Per unit, whether any element was positive: channels for conv outputs, the last dim otherwise."""
    if y.dim() == 0:
        return (y > 0).reshape(1)
    if y.dim() == 1:
        return (y > 0).any().reshape(1)
    return y.detach().amax(dim=_unit_dims(y)) > 0


def activation_sums(y: Tensor, module_type: str = "") -> Tensor:
    """One module output summarised as sums that add across calls (float64 vector, ACT_SUM_FIELDS order).

    count, sum, sum of squares, exact zeros, non-finite elements, and saturated elements (only for
    bounded modules such as Sigmoid/Tanh, else 0). Sums add, so a module called twice per step, or
    over accumulated micro-batches, gets statistics over all its outputs.
    """
    y = y.detach()
    dt = _stat_dtype(y.device)
    n = y.numel()
    yf = y if y.dtype in (torch.float32, torch.float64) else y.float()
    s = yf.sum(dtype=dt)
    sq = torch.linalg.vector_norm(yf, 2, dtype=dt).square()
    zeros = n - torch.count_nonzero(yf)
    nonfinite = n - torch.isfinite(yf).sum()
    rng = BOUNDED_RANGES.get(module_type)
    if rng is not None:
        centre, half = rng
        sat = ((yf - centre).abs() > half * SATURATION_MARGIN).sum()
    else:
        sat = torch.zeros((), dtype=dt, device=y.device)
    count = torch.full((), n, dtype=dt, device=y.device)
    return torch.stack([count, s, sq, zeros.to(dt), nonfinite.to(dt), sat.to(dt)])


def activation_stats(sums: Tensor) -> dict[str, Tensor]:
    """Mean, std (population), zero, non-finite and saturation fractions from summed ACT_SUM_FIELDS.

    ``sums`` has shape [..., ACT_N]; rows with count 0 give NaN (not measured).
    """
    count, s, sq, zeros, nonfinite, sat = sums.unbind(-1)
    denom = torch.where(count > 0, count, torch.nan)
    mean = s / denom
    var = (sq / denom - mean * mean).clamp_min(0)
    return {
        "mean": mean,
        "std": var.sqrt(),
        "zero_frac": zeros / denom,
        "sat_frac": sat / denom,
        "nonfinite": torch.where(count > 0, nonfinite, torch.nan),
    }


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm of each output unit, broadcastable to ``x``: per row for Linear, per filter for conv (AGC).

    Scalars and vectors (biases, gains) use their absolute value per element, as in Brock et al. 2021.
    """
    if x.dim() <= 1:
        return x.abs()
    return torch.linalg.vector_norm(x, 2, dim=tuple(range(1, x.dim())), keepdim=True)
