"""Fold the clip coefficient into a fused Adam/AdamW step instead of rewriting the gradients.

torch's fused Adam/AdamW (``fused=True``; ``torch._fused_adamw_``) take ``grad_scale`` and
``found_inf``, the attributes GradScaler sets on an optimizer: the kernel *divides* every gradient by
``grad_scale`` and skips the step when ``found_inf`` is 1. With ``grad_scale = 1 / coef`` the update
equals clip-then-step (``g · coef``) while gradscope reads the gradients once (the norm pass) and
never writes them: the scale pass disappears. (torch's CPU fused kernel writes the unscaled gradient
back into ``.grad`` as part of its step, so after the step ``.grad`` holds ``g · coef`` there.)

Departure from clip-then-step: with a non-finite norm the step is skipped (``found_inf = 1``), as under
GradScaler, where torch's clip would multiply the grads by NaN (or 0) and step anyway.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ._listeners import notify
from .backend import check_stats, measure, resolve
from .base import tensor_stats
from .result import ClipResult, empty_result, grads_of, param_list


def _check_fused(optimizer: torch.optim.Optimizer) -> None:
    fused = all(group.get("fused") for group in optimizer.param_groups)
    if not (isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and fused):
        raise ValueError(
            f"fold_step needs a fused Adam/AdamW, got {type(optimizer).__name__}: create it with "
            "torch.optim.AdamW(params, fused=True), or clip with clip_grad_norm_ instead"
        )
    if getattr(optimizer, "grad_scale", None) is not None:
        raise ValueError("optimizer.grad_scale is already set (GradScaler?); fold_step cannot combine them")


def fold_step(
    optimizer: torch.optim.Optimizer,
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    backend: str = "auto",
    stats: str = "auto",
) -> ClipResult:
    """Measure the norm, then ``optimizer.step()`` with ``grad_scale = 1/coef`` and ``found_inf``.

    Gradients are left unscaled. Returns the ClipResult (also handed to the clip listeners).
    ``stats``: "auto", "norm" or "full", as in ``clip_grad_norm_``.
    """
    check_stats(stats)
    _check_fused(optimizer)
    params = param_list(parameters)
    grads = grads_of(params)
    with torch.no_grad():
        if not grads:
            result = empty_result()
            optimizer.step()
            notify(params, result)
            return result
        which = resolve(backend, grads, float(norm_type))
        out = measure(grads, float(max_norm), float(norm_type), which, stats)
    result = ClipResult(out.total, out.coef, ~(out.coef >= 1.0), tensor_stats(out), float(norm_type))
    optimizer.grad_scale = out.grad_scale  # type: ignore[attr-defined]
    optimizer.found_inf = out.found_inf  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    notify(params, result)
    return result
