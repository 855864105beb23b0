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

``auto`` takes ``triton`` when every grad is a contiguous fp32/bf16/fp16 CUDA tensor on one device,
the norm type is > 0 and triton is importable; otherwise ``torch``.
"""

from __future__ import annotations

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

BACKENDS = ("auto", "triton", "torch")
STATS = ("auto", "norm", "full")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _kernel_fits(grads: Sequence[Tensor], norm_type: float) -> bool:
    return (
        norm_type > 0
        and len({g.device for g in grads}) == 1
        and all(g.dtype in _KERNEL_DTYPES and g.is_contiguous() for g in grads)
    )


def resolve(backend: str, grads: Sequence[Tensor], norm_type: float = 2.0) -> str:
    """'triton' or 'torch' for these grads; raises for an unknown name or an impossible 'triton'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "torch" or not grads:
        return "torch"
    on_cuda = all(g.is_cuda for g in grads)
    if backend == "auto":
        return "triton" if on_cuda and _kernel_fits(grads, norm_type) and available("triton") else "torch"
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA gradients, got {grads[0].device.type} ones; use backend='auto' "
            "or 'torch', or set TRITON_INTERPRET=1 before importing triton to run the kernels on CPU"
        )
    return "triton"


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


def _generic_norm(grads: Sequence[Tensor], max_norm: float | Tensor, p: float) -> Finalized:
    """Any device, ``stats="norm"``: one grouped foreach norm pass; non-finite as a 0/1 flag."""
    norms = functional.norms(grads, p)
    total = functional.total_norm(norms, p)
    coef = reference.clip_coef(total, max_norm)
    flag = (~torch.isfinite(norms)).float()
    mx = norms if math.isinf(p) else None  # the inf-norm is max |g|
    return Finalized(norms, mx, flag, total, coef, (~torch.isfinite(total)).float(), 1.0 / coef)


def _generic(grads: Sequence[Tensor], max_norm: float | Tensor, p: float) -> Finalized:
    """Any device, any norm type, ``stats="full"``: foreach norms via ``functional.grad_stats``."""
    norm2, maxabs, nonfinite = functional.grad_stats(grads)
    if p == 2.0:
        norms = norm2
    elif math.isinf(p) and p > 0:
        norms = maxabs
    else:
        dev = norm2.device
        norms = torch.stack([torch.linalg.vector_norm(g, p, dtype=torch.float32).to(dev) for g in grads])
    total = functional.total_norm(norms, p)
    coef = reference.clip_coef(total, max_norm)
    found = (~torch.isfinite(total)).float()
    return Finalized(norms, maxabs, nonfinite, total, coef, found, 1.0 / coef)


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
    if stats == "norm" and p > 0:
        return _generic_norm(grads, max_norm, p)
    return _generic(grads, max_norm, p)


def scale_(grads: Sequence[Tensor], coef: Tensor, backend: str) -> None:
    """``g *= coef`` (0-d fp32 device tensor); skipped when ``coef >= 1`` without reading it on CUDA."""
    if backend == "triton":
        _kernels().scale_(grads, coef.to(torch.float32).contiguous())
    else:
        reference.scale_(grads, coef)
