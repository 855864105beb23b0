"""torch.distributed as it is: which rank writes, and the reductions that make sharded stats whole.

DDP: gradients are identical on every rank after the all-reduce; rank 0 writes. FSDP2 / DTensor:
per-tensor sums of squares and non-finite counts are summed over the mesh (one all-reduce of the
per-tensor vector) and max |g| takes the max, before norms are taken.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        return None
    return DTensor


def is_dtensor(t: Tensor) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def _replication(t: Tensor) -> float:
    """How many ranks hold each element of a DTensor: the product of its replicated mesh dims."""
    n = 1
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_replicate():
            n *= t.device_mesh.size(dim)  # type: ignore[attr-defined]
    return float(n)


@functools.lru_cache(maxsize=16)
def _weights(values: tuple[float, ...], device: torch.device) -> Tensor:
    """Per-tensor replication weights on the device, built once (a host-to-device copy waits)."""
    return torch.tensor(values, device=device)


def sharded_grad_stats(grads: Sequence[Tensor], exact_nonfinite: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """grad_stats for DTensor gradients: local partial sums, then one SUM and one MAX all-reduce.

    Replicated placements are divided by their replication so each element counts once. The
    collectives run on the gradients' mesh (all tensors must share one mesh, as with fully_shard).
    """
    from gradscope import functional as F

    local = [g.to_local() if is_dtensor(g) else g for g in grads]
    norm, maxabs, nonfinite = F.grad_stats(local, exact_nonfinite=exact_nonfinite)
    weights = _weights(tuple(1.0 / _replication(g) if is_dtensor(g) else 1.0 for g in grads), norm.device)
    summed = torch.cat([norm.square() * weights, nonfinite * weights])
    meshes = [g.device_mesh for g in grads if is_dtensor(g)]  # type: ignore[attr-defined]
    group = meshes[0].get_group() if meshes and meshes[0].ndim == 1 else None
    torch.distributed.all_reduce(summed, group=group)
    torch.distributed.all_reduce(maxabs, op=torch.distributed.ReduceOp.MAX, group=group)
    n = len(grads)
    nonfinite = summed[n:].round()
    if not exact_nonfinite:
        nonfinite = nonfinite.clamp_max(1)
    return summed[:n].sqrt(), maxabs, nonfinite


def norms(tensors: Sequence[Tensor]) -> Tensor:
    """Per-tensor L2 norms (fp32 vector); DTensors' local parts are reduced over their mesh."""
    from gradscope import functional as F

    if not tensors or not is_dtensor(tensors[0]):
        return F.norms(tensors)
    norm, _, _ = sharded_grad_stats(tensors)
    return norm


def reduce_nonfinite(arrays: dict[str, Tensor]) -> None:
    """Sum non-finite counts of activations and flow over ranks, in place (at flush, on every rank).

    Every rank must call this at the same flush with the same keys (they record the same steps).
    """
    for key in sorted(k for k in arrays if k.endswith("nonfinite") and not k.startswith("param/")):
        t = arrays[key]
        summed = torch.nan_to_num(t, nan=0.0)
        torch.distributed.all_reduce(summed)
        t.copy_(torch.where(torch.isnan(t) & (summed == 0), t, summed))
