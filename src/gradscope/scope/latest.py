"""``scope.latest()``: the last flushed step's headline statistics as plain floats.

Computed on the writer thread from the host copy of each flushed chunk, so reading it never touches
the device: no sync, at most ``flush_every`` steps old.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradscope.run import format as fmt

_SCALAR = fmt.scalar_key("")


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _nanreduce(values: np.ndarray, fn: Any) -> float:
    finite = values[~np.isnan(values)]
    return float(fn(finite)) if finite.size else math.nan


def summarise(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The last step of a chunk: ``step``, every per-step scalar (``grad_norm``, ``loss``, ``lr``, ...),
    ``layer_grad_norm_min``/``_max`` over parameters, and ``nonfinite``: tensors holding NaN/Inf."""
    steps = arrays.get("step")
    if steps is None or len(steps) == 0:
        return {}
    out: dict[str, float] = {"step": float(steps[-1])}
    for key, arr in arrays.items():
        if key.startswith(_SCALAR):
            out[key[len(_SCALAR):]] = _float(arr[-1])
    grad = arrays.get(fmt.metric_key("param", "grad_norm"))
    if grad is not None and grad.shape[1]:
        out["layer_grad_norm_min"] = _nanreduce(grad[-1], np.min)
        out["layer_grad_norm_max"] = _nanreduce(grad[-1], np.max)
    counts = [arrays[k][-1] for k in (fmt.metric_key("param", "grad_nonfinite"), fmt.metric_key("act", "nonfinite"),
                                       fmt.metric_key("flow", "nonfinite")) if k in arrays and arrays[k].shape[1]]
    out["nonfinite"] = float(sum(np.nansum(c) for c in counts))
    return out
