"""Backend choice and the two passes every global-norm strategy needs: measure, then scale.

``measure`` returns per-tensor and global norms, max |g|, non-finite counts, the clip coefficient and
fold values (``found_inf``, ``grad_scale``), all fp32 device tensors:

* ``triton``: the fused kernels of ``gradscope.kernels.clip_norm`` (CUDA; CPU under TRITON_INTERPRET=1).
* ``torch`` on CPU: ``gradscope.clip.cpu``, torch's ``_foreach_norm`` read pass plus host branches.
* ``torch`` elsewhere: grouped ``_foreach_norm`` (``functional``), no branch on a value.

``stats`` says what a step pays for (see ``STATS``); ``"auto"`` is ``"full"`` while a listener is
registered (``add_listener``: a Scope uses max |g| and then skips its own pass) and ``"norm"`` otherwise:

* ``"norm"``: per-tensor norms and non-finite information, and max |g| only where it is free (the
  fused Triton pass); elsewhere ``maxabs`` is None. Non-finite counts are exact on CPU and Triton;
  on the generic torch path (other devices) they are a 0/1 flag per tensor (its norm is not finite).
* ``"full"``: also max |g| and exact non-finite counts everywhere (extra reads off the Triton path).

``auto`` takes ``triton`` when every grad is a dense (contiguous or channels_last) fp32/bf16/fp16/fp64
CUDA tensor on one device, the norm type is finite or inf and triton is importable; otherwise ``torch``.
On the Triton path one walk over the gradients finds the kernel's cached plan; the list returned by
``grads_of`` carries it from ``resolve`` to ``measure`` and ``scale_``.

Norms, totals and coefficients are fp32, fp64 when a gradient is fp64 (torch's dtype rule; bf16/fp16 are
reduced in fp32 where torch keeps half precision).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from gradscope import functional
from gradscope._optional import available
from gradscope.kernels import reference
from gradscope.kernels.reference import Finalized

from . import _listeners, cpu
from .torchnorm import foreach_norms, total_norm

BACKENDS = ("auto", "triton", "torch")
STATS = ("auto", "norm", "full")


@functools.cache
def _triton_available() -> bool:
    return available("triton")


def _kernel_norm_type(p: float) -> bool:
    return not math.isnan(p) and (math.isfinite(p) or p > 0)


def resolve(backend: str, grads: Sequence[Tensor], norm_type: float = 2.0) -> str:
    """'triton' or 'torch' for these grads; raises for an unknown name or an impossible 'triton'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "torch" or not grads:
        return "torch"
    if backend == "auto":
        if not (grads[0].is_cuda and _kernel_norm_type(float(norm_type)) and _triton_available()):
            return "torch"
        if type(grads[0]) is not torch.Tensor:  # a DTensor (FSDP2) has no storage to point at: torch's path
            return "torch"
        return "triton" if _kernels().plan_for(grads).problem is None else "torch"
    if not grads[0].is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA gradients, got {grads[0].device.type} ones; use backend='auto' "
            "or 'torch', or set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU"
        )
    return "triton"


@functools.cache
def _kernels():
    from gradscope._optional import require

    require("triton", "the fused clip kernel")
    from gradscope.kernels import clip_norm

    return clip_norm


def check_stats(stats: str) -> str:
    """``stats`` itself, or a ValueError that lists the choices."""
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, not {stats!r}")
    return stats


def _finish(grads, norms, maxabs, nonfinite, max_norm, p) -> Finalized:
    total = total_norm(norms, p)
    coef = reference.clip_coef(total, max_norm)
    return Finalized(norms, maxabs, nonfinite, total, coef, (~torch.isfinite(total)).float(), 1.0 / coef)


def _generic_norm(grads: Sequence[Tensor], max_norm: float | Tensor, p: float) -> Finalized:
    """Any device, ``stats="norm"``: one grouped foreach norm pass; non-finite as a 0/1 flag (p > 0)."""
    norms = foreach_norms(grads, p)
    if p > 0:
        flag = (~torch.isfinite(norms)).float()
    else:  # a nonzero count or a negative order says nothing about NaN/Inf elements: count them
        flag = torch.stack([(~torch.isfinite(g)).sum().to(norms.device) for g in grads]).float()
    mx = norms if math.isinf(p) and p > 0 else None  # the inf-norm is max |g|
    return _finish(grads, norms, mx, flag, max_norm, p)


def _generic(grads: Sequence[Tensor], max_norm: float | Tensor, p: float) -> Finalized:
    """Any device, any norm type, ``stats="full"``: torch's norms, max |g| and exact non-finite counts."""
    _, maxabs, nonfinite = functional.grad_stats(grads)
    norms = foreach_norms(grads, p)
    return _finish(grads, norms, maxabs, nonfinite, max_norm, p)


def measure(
    grads: Sequence[Tensor], max_norm: float | Tensor, p: float, backend: str, stats: str = "auto"
) -> Finalized:
    """Read-only pass over ``grads`` (non-empty): norms, stats, coefficient; ``backend`` resolved."""
    p = float(p)
    if stats == "auto":
        stats = "full" if _listeners.active() else "norm"
    if backend == "triton":
        kernel_max = float(max_norm) if not isinstance(max_norm, Tensor) else math.inf
        out = _kernels().norm_stats(grads, kernel_max, p)
        if isinstance(max_norm, Tensor):  # a device threshold (adaptive clippers): coef in torch
            out.coef = reference.clip_coef(out.total, max_norm)
            out.grad_scale = 1.0 / out.coef
        return out
    if cpu.fits(grads, p):
        return cpu.measure(grads, max_norm, p, stats)
    if stats == "norm":
        return _generic_norm(grads, max_norm, p)
    return _generic(grads, max_norm, p)


def scale_(grads: Sequence[Tensor], coef: Tensor, backend: str) -> None:
    """``g *= coef`` (0-d device tensor); skipped when ``coef >= 1`` without reading it on CUDA."""
    if backend == "triton":
        if coef.dtype not in (torch.float32, torch.float64):
            coef = coef.float()
        _kernels().scale_(grads, coef.contiguous())
    else:
        reference.scale_(grads, coef)
