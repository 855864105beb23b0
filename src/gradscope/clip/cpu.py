"""gradscope's torch path on CPU: torch's own read pass, and host branches instead of extra passes.

On CPU reading a tensor's value costs no device sync, so this path may branch on values:

* **Read pass**: exactly torch's, ``torch._foreach_norm(grads, p)`` per dtype (bf16/fp16 reduced in
  fp32; fp64 kept in fp64, see ``torchnorm``). For ``p = inf`` the norm is max |g| from ``aminmax``
  (the CPU ``_foreach_norm(inf)`` is ~10x slower than ``aminmax``).
* **Non-finite elements through the norm** (p > 0): a NaN or ±Inf element makes ``Σ|x|^p`` NaN or
  Inf, so a finite norm proves every element finite. Exact counts are taken only for the tensors whose
  norm is not finite (some element NaN/Inf, or a sum that overflowed: then the count is 0). A healthy
  step pays nothing for them. For p <= 0 (torch's nonzero count, negative orders) a norm proves
  nothing, so every tensor is counted.
* **max |g|** (``stats="full"``) is one more read, ``aminmax`` per tensor, only when asked.
* **Scale pass**: skipped when ``coef >= 1`` (``reference.scale_``).

The result is the ``Finalized`` of ``gradscope.kernels.reference``, with ``maxabs = None`` when
``stats="norm"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradscope.kernels.reference import Finalized, clip_coef

from .torchnorm import acc_dtype, foreach_norms

_F32 = torch.float32


def fits(grads: Sequence[Tensor], p: float) -> bool:
    """Whether this path takes ``grads``: all CPU floating-point tensors."""
    return all(g.is_cpu and g.is_floating_point() for g in grads)


def maxabs(grads: Sequence[Tensor]) -> Tensor:
    """Per-tensor max |g| [T] (fp64 if a grad is fp64, else fp32): NaN when the tensor holds a NaN, 0 if empty."""
    his, los = [], []
    for g in grads:
        if g.numel():
            lo, hi = torch.aminmax(g)
        else:
            lo = hi = g.new_zeros(())
        los.append(lo)
        his.append(hi)
    return torch.maximum(-torch.stack(los), torch.stack(his)).to(acc_dtype(grads))


def _nonfinite(grads: Sequence[Tensor], norm: Tensor, finite: bool, p: float) -> Tensor:
    """Exact NaN/Inf counts; for p > 0 only the tensors with a non-finite norm are read (CPU host branch)."""
    counts = torch.zeros(len(grads), dtype=_F32)
    if p <= 0:  # a nonzero count or a negative order says nothing about NaN/Inf elements
        return torch.stack([(~torch.isfinite(g)).sum() for g in grads]).to(_F32)
    if not finite:
        for i in torch.nonzero(~torch.isfinite(norm)).flatten().tolist():  # CPU: no sync
            counts[i] = (~torch.isfinite(grads[i])).sum()
    return counts


def measure(grads: Sequence[Tensor], max_norm: float | Tensor, p: float, stats: str) -> Finalized:
    """Norms, exact non-finite counts, total norm and coefficient of CPU ``grads`` (non-empty).

    ``stats="full"`` adds per-tensor max |g| (one more read); ``"norm"`` leaves ``maxabs = None``.
    """
    full = stats == "full"
    if math.isinf(p):
        mx = maxabs(grads)
        norm, total = mx, mx.amax()
    else:
        mx = maxabs(grads) if full else None
        norm = foreach_norms(grads, p)
        total = torch.linalg.vector_norm(norm, p)
    finite = math.isfinite(total.item())  # CPU: no device sync. Finite total => every norm finite (p > 0).
    nonfinite = _nonfinite(grads, norm, finite, p)
    coef = clip_coef(total, max_norm)
    found = torch.zeros((), dtype=_F32) if finite else torch.ones((), dtype=_F32)
    return Finalized(norm, mx, nonfinite, total, coef, found, coef.reciprocal())
