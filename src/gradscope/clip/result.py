"""The result every clipper returns: device tensors only, nothing read back to the host."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TensorStats:
    """Per-tensor statistics of the gradients, pre-clip, fp32 vectors in parameter order.

    ``norm`` is in the clipper's norm type; ``nonfinite`` counts NaN/Inf elements; ``maxabs`` is max |g|
    (NaN when the tensor holds a NaN). Either is ``None`` where it was not measured: ``maxabs`` with
    ``stats="norm"`` off the Triton path (ask for ``stats="full"``, or register a listener under the
    default ``"auto"``), both for AGC.
    """

    norm: Tensor
    maxabs: Tensor | None = None
    nonfinite: Tensor | None = None


@dataclass
class ClipResult:
    """What one clip did.

    ``total_norm``: pre-clip global norm (0-d fp32; fp64 for fp64 grads). ``coef``: the applied
    coefficient, 1.0 where nothing was clipped (0-d for global strategies, one per tensor for per-layer
    ones). ``clipped``: 0-d bool, whether any gradient changed. ``per_tensor``: the per-tensor
    statistics. ``norm_type``: the p of ``total_norm`` and ``per_tensor.norm`` (a listener that records
    L2 norms, like a Scope, uses them only when it is 2).
    """

    total_norm: Tensor
    coef: Tensor
    clipped: Tensor
    per_tensor: TensorStats
    norm_type: float = 2.0


def empty_result() -> ClipResult:
    """The result for a parameter list without gradients: norm 0, nothing clipped (as torch)."""
    empty = torch.zeros(0, dtype=torch.float32)
    return ClipResult(
        torch.tensor(0.0), torch.tensor(1.0), torch.tensor(False), TensorStats(empty, empty, empty)
    )


def param_list(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    """A single tensor or an iterable (a generator is consumed once) as a list, like torch."""
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters)


class Grads(list):
    """A list of gradients that can carry the fused kernel's plan for one clip (``plan`` attribute), so
    the backend check, the norm pass and the scale pass walk the gradients once between them."""

    __slots__ = ("plan",)


def grads_of(params: list[Tensor]) -> list[Tensor]:
    """The gradients of ``params`` that exist, in order."""
    out = Grads([p.grad for p in params if p.grad is not None])
    out.plan = None
    return out
