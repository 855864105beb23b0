"""Per-tensor norms exactly as ``torch.nn.utils.get_total_norm`` computes them, on any device.

torch groups the tensors by (device, dtype) and calls ``torch._foreach_norm`` once per group; the
per-tensor norms keep their tensor's dtype and the total is ``vector_norm(stack(norms), p)``.
gradscope does the same with one deliberate difference: bf16/fp16 tensors are reduced to an fp32 norm
(torch returns a half-precision norm). The norms come back in parameter order as one vector on the first
tensor's device, fp64 when any tensor is fp64 (so fp64 gradients never overflow an fp32 norm), else fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def acc_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """fp64 when any tensor is fp64, else fp32: the dtype of norms, totals and coefficients."""
    return torch.float64 if any(t.dtype is torch.float64 for t in tensors) else torch.float32


def foreach_norms(tensors: Sequence[Tensor], p: float) -> Tensor:
    """Per-tensor ``p``-norms (any p torch accepts, 0 and negatives included) as one vector."""
    acc = acc_dtype(tensors)
    dev, d0 = tensors[0].device, tensors[0].dtype
    if all(t.dtype is d0 and t.device == dev for t in tensors):  # the common case: one group
        kw = {"dtype": torch.float32} if d0 in _HALF else {}
        return torch.stack(torch._foreach_norm(list(tensors), p, **kw)).to(acc)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    out: list[Tensor | None] = [None] * len(tensors)
    for (_, dtype), idx in groups.items():
        kw = {"dtype": torch.float32} if dtype in _HALF else {}
        for i, n in zip(idx, torch._foreach_norm([tensors[i] for i in idx], p, **kw), strict=True):
            out[i] = n
    return torch.stack([n.to(dev, acc) for n in out])  # type: ignore[union-attr]


def total_norm(norms: Tensor, p: float) -> Tensor:
    """The global norm from per-tensor norms, torch's ``vector_norm(stack(norms), p)`` (0 when empty)."""
    if norms.numel() == 0:
        return torch.zeros((), dtype=norms.dtype, device=norms.device)
    return torch.linalg.vector_norm(norms, p)
