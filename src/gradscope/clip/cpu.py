"""gradscope's torch path on CPU: torch's own read pass, and host branches instead of extra passes.

On CPU reading a tensor's value costs no device sync, so this path may branch on values:

* **Read pass**: exactly torch's, ``torch._foreach_norm(grads, p)`` per dtype (bf16/fp16 reduced in
  fp32). For ``p = inf`` the norm is max |g| from ``aminmax`` (the CPU ``_foreach_norm(inf)`` is ~10x
  slower than ``aminmax``).
* **Non-finite elements through the norm**: a NaN or ±Inf element makes ``Σ|x|^p`` NaN or Inf, so a
  finite norm proves every element finite. Exact counts are taken only for the tensors whose norm is
  not finite (some element NaN/Inf, or a sum that overflowed fp32: then the count is 0). A healthy
  step pays nothing for them.
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

_F32 = torch.float32


def fits(grads: Sequence[Tensor], p: float) -> bool:
    """Whether this path takes ``grads``: all CPU floating-point tensors and ``p > 0``."""
    return p > 0 and all(g.is_cpu and g.is_floating_point() for g in grads)


def _by_dtype(grads: Sequence[Tensor]) -> list[tuple[torch.dtype, list[int] | None]]:
    """``[(dtype, indices)]``; one group with ``None`` indices (all of them) in the common case."""
    d0 = grads[0].dtype
    if all(g.dtype is d0 for g in grads):
        return [(d0, None)]
    groups: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault(g.dtype, []).append(i)
    return list(groups.items())


def _foreach_norms(grads: Sequence[Tensor], p: float) -> Tensor:
    """Per-tensor p-norms, fp32 [T]: one ``_foreach_norm`` per dtype."""
    out: list[Tensor | None] = [None] * len(grads)
    for dtype, idx in _by_dtype(grads):
        kw = {} if dtype in (_F32, torch.float64) else {"dtype": _F32}
        group = grads if idx is None else [grads[i] for i in idx]
        norms = torch._foreach_norm(group, p, **kw)
        if idx is None:
            stacked = torch.stack(norms)
            return stacked if dtype is not torch.float64 else stacked.to(_F32)
        for i, n in zip(idx, norms, strict=True):
            out[i] = n
    return torch.stack([n.to(_F32) for n in out])  # type: ignore[union-attr]


def maxabs(grads: Sequence[Tensor]) -> Tensor:
    """Per-tensor max |g|, fp32 [T]: NaN when the tensor holds a NaN, 0 for an empty tensor."""
    his, los = [], []
    for g in grads:
        if g.numel():
            lo, hi = torch.aminmax(g)
        else:
            lo = hi = g.new_zeros(())
        los.append(lo)
        his.append(hi)
    return torch.maximum(-torch.stack(los), torch.stack(his)).to(_F32)


def _nonfinite(grads: Sequence[Tensor], norm: Tensor, finite: bool) -> Tensor:
    """Exact NaN/Inf counts; only the tensors with a non-finite norm are read (CPU host branch)."""
    counts = torch.zeros(len(grads), dtype=_F32)
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
        norm = _foreach_norms(grads, p)
        total = torch.linalg.vector_norm(norm, p)
    finite = math.isfinite(total.item())  # CPU: no device sync. Finite total => every norm finite.
    nonfinite = _nonfinite(grads, norm, finite)
    coef = clip_coef(total, max_norm)
    found = torch.zeros((), dtype=_F32) if finite else torch.ones((), dtype=_F32)
    return Finalized(norm, mx, nonfinite, total, coef, found, coef.reciprocal())
