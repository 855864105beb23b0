"""Global-norm clipping: torch's ``clip_grad_norm_`` with per-tensor statistics and a fused backend.

Rule (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks"):
``g ← g · min(1, max_norm / (‖g‖_p + 1e-6))`` with ``‖g‖_p`` the p-norm of all gradients as one vector.

Deliberate difference from torch: the returned norm is fp32 for bf16/fp16 grads (fp64 when a grad is
fp64, as in torch). torch returns a bf16 norm for bf16 grads (its norm is rounded to 8 bits of
mantissa, up to ~0.2 % off the fp32 value), and derives its coefficient from it; gradscope accumulates
and keeps fp32.

torch's two primitives have counterparts here too: ``get_total_norm(tensors)`` (plain tensors, e.g.
the gradients) and ``clip_grads_with_norm_(parameters, max_norm, total_norm)``; ``clip_grad_norm_`` is
one, then the other.

``stats`` picks the per-tensor statistics a step pays for: ``"norm"`` (norms and non-finite
information, read in the same pass as the global norm), ``"full"`` (also max |g|, one more read off
the Triton path) or ``"auto"`` (default: ``"full"`` while a listener such as a Scope is registered,
else ``"norm"``). See ``gradscope.clip.backend``.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor

from gradscope.kernels.reference import clip_coef

from ._listeners import notify
from .backend import check_stats, measure, resolve, scale_
from .base import Clipper, tensor_stats
from .result import ClipResult, Grads, empty_result, grads_of, param_list


def clip_global(
    grads: list[Tensor], max_norm: float | Tensor, norm_type: float, backend: str, stats: str = "auto"
) -> ClipResult:
    """Measure, then ``g *= coef`` (skipped on device when coef >= 1). ``grads`` non-empty."""
    which = resolve(backend, grads, norm_type)
    out = measure(grads, max_norm, norm_type, which, stats)
    scale_(grads, out.coef, which)
    return ClipResult(out.total, out.coef, ~(out.coef >= 1.0), tensor_stats(out), float(norm_type))


def _raise_nonfinite(total: Tensor, norm_type: float) -> None:
    # error_if_nonfinite reads the norm on the host: a deliberate sync, only when asked (as torch).
    if not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )


def get_total_norm(
    tensors: Tensor | Iterable[Tensor],
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    backend: str = "auto",
) -> Tensor:
    """Drop-in for ``torch.nn.utils.get_total_norm``: the p-norm of ``tensors`` as one vector.

    Plain tensors (pass the gradients, not the parameters). 0 for an empty list. ``foreach`` is accepted
    for signature compatibility; ``backend`` as in ``clip_grad_norm_``. Touches nothing.
    """
    del foreach
    grads = Grads(param_list(tensors))
    grads.plan = None
    if not grads:
        return torch.tensor(0.0)
    with torch.no_grad():
        which = resolve(backend, grads, float(norm_type))
        total = measure(grads, math.inf, float(norm_type), which, "norm").total
    if error_if_nonfinite:
        _raise_nonfinite(total, norm_type)
    return total


def clip_grads_with_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    total_norm: Tensor,
    foreach: bool | None = None,
    backend: str = "auto",
) -> None:
    """Drop-in for ``torch.nn.utils.clip_grads_with_norm_``: ``g *= min(max_norm / (total_norm + 1e-6), 1)``.

    ``total_norm`` is a norm already taken (``get_total_norm``); the gradients are scaled in place,
    not written at all when the coefficient is 1 (on CPU) or by programs that exit at once (Triton).
    """
    del foreach
    grads = grads_of(param_list(parameters))
    if not grads:
        return
    with torch.no_grad():
        which = resolve(backend, grads)
        coef = clip_coef(total_norm.to(grads[0].device), float(max_norm))
        scale_(grads, coef, which)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    backend: str = "auto",
    stats: str = "auto",
) -> Tensor:
    """Drop-in for ``torch.nn.utils.clip_grad_norm_``; returns the pre-clip total norm (fp32; fp64 grads: fp64).

    ``backend``: "auto" (fused Triton kernels for CUDA grads when triton is installed, else torch),
    "triton" or "torch". ``foreach`` is accepted for signature compatibility: gradscope's passes are
    always grouped. ``stats``: "auto", "norm" or "full" (module docstring). The per-tensor statistics go to
    the listeners of ``add_listener``.
    """
    check_stats(stats)
    is_generator = isinstance(parameters, types.GeneratorType)
    params = param_list(parameters)
    if is_generator and not params:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=2)
    grads = grads_of(params)
    with torch.no_grad():
        if not grads:
            result = empty_result()
        else:
            which = resolve(backend, grads, float(norm_type))
            out = measure(grads, float(max_norm), float(norm_type), which, stats)
            if error_if_nonfinite:
                _raise_nonfinite(out.total, norm_type)
            scale_(grads, out.coef, which)
            result = ClipResult(out.total, out.coef, ~(out.coef >= 1.0), tensor_stats(out), float(norm_type))
    notify(params, result)
    return result.total_norm


class NormClipper(Clipper):
    """Clip the global gradient norm to ``max_norm`` (see the module docstring)."""

    name = "norm"

    def __init__(
        self, max_norm: float = 1.0, norm_type: float = 2.0, backend: str = "auto", stats: str = "auto"
    ) -> None:
        self.max_norm, self.norm_type, self.backend = float(max_norm), float(norm_type), backend
        self.stats = check_stats(stats)

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        return clip_global(grads, self.max_norm, self.norm_type, self.backend, self.stats)
