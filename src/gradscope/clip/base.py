"""The clipper interface: ``clipper(parameters) -> ClipResult``, plus state for the adaptive ones.

A clipper is a small stateful object (state lives in device tensors, updated without host syncs).
``__call__`` collects the gradients, runs ``_clip`` under ``no_grad`` and hands the result to the
listeners of ``gradscope.clip.add_listener``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._listeners import notify
from .backend import check_stats, measure, resolve
from .result import ClipResult, TensorStats, empty_result, grads_of, param_list


class Clipper:
    """Base class. Subclasses implement ``_clip(params, grads) -> ClipResult`` (``grads`` non-empty)."""

    name = "base"

    def __call__(self, parameters: Tensor | Iterable[Tensor]) -> ClipResult:
        params = param_list(parameters)
        grads = grads_of(params)
        with torch.no_grad():
            result = self._clip(params, grads) if grads else empty_result()
        notify(params, result)
        return result

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State to resume with; stateless clippers return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class NoClip(Clipper):
    """Measure only: the pre-clip statistics of a run that does not clip (the baseline)."""

    name = "none"

    def __init__(self, norm_type: float = 2.0, backend: str = "auto", stats: str = "auto") -> None:
        self.norm_type, self.backend, self.stats = float(norm_type), backend, check_stats(stats)

    def _clip(self, params: list[Tensor], grads: list[Tensor]) -> ClipResult:
        which = resolve(self.backend, grads, self.norm_type)
        out = measure(grads, float("inf"), self.norm_type, which, self.stats)
        one = torch.ones((), dtype=torch.float32, device=out.total.device)
        clipped = torch.zeros((), dtype=torch.bool, device=one.device)
        return ClipResult(out.total, one, clipped, tensor_stats(out), self.norm_type)


def tensor_stats(out) -> TensorStats:
    """Per-tensor statistics of a ``measure`` result."""
    return TensorStats(out.norm, out.maxabs, out.nonfinite)
