"""Per-tensor L2 norm and max |x| of many tensors in a fixed number of torch calls.

The parameter side measures every gradient once per backward (and the weights on update-ratio
steps). Two reductions per tensor cost two dispatches each (~5-15 us on a CPU), which at thousands
of tensors costs more than the maths. Here the Python work per step is one list of the tensors and a
handful of calls, whatever the number of tensors:

* CUDA and other accelerators: ``_foreach_norm`` for the L2 and the inf norm (multi-tensor kernels).
* CPU: tensors up to ``SMALL`` elements that share a shape (and dtype) with another are stacked,
  one ``[count, size]`` matrix per shape, each reduced by one norm, one ``amax`` and one ``amin``;
  the rest keep a BLAS dot and an ``aminmax`` each, where the dispatch is small beside the reading.

A layout (which tensors go where, the permutation back) depends only on which tensors are present,
so it is built once per pattern and cached: after the first step nothing here copies Python data to
the device.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope import functional as F

SMALL = 1 << 16  # elements: CPU tensors up to this size are measured from one flat copy
_FLOATS = (torch.float32, torch.float64)


@dataclass
class _Layout:
    groups: list[list[int]]  # positions of each group of equal shapes, stacked into one matrix
    flat: list[int]  # the positions of all groups, in group order
    each: list[int]  # positions measured one by one
    inverse: Tensor | None  # results in (flat + each) order -> input order; None: already in order


class GroupedStats:
    """``stats(tensors, key)``: per-tensor L2 norm and max |x| (float32, input order). ``key`` names the
    pattern of ``tensors`` (same key: same sizes, devices and dtypes in the same order)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = device.type == "cpu"
        self._layouts: dict[Hashable, _Layout] = {}

    def stats(self, tensors: Sequence[Tensor], key: Hashable, maxabs: bool = True) -> tuple[Tensor, Tensor | None]:
        n = len(tensors)
        if n == 0:
            empty = torch.empty(0, dtype=torch.float32, device=self.device)
            return empty, (empty.clone() if maxabs else None)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) > 32:  # patterns that keep changing: do not grow without bound
                self._layouts.clear()
            layout = self._layouts[key] = self._layout(tensors)
        norms: list[Tensor] = []
        maxes: list[Tensor] = []
        for group in layout.groups:
            # one [count, size] copy per shape: stack is ~4x faster than flattening on the CPU
            block = torch.stack([tensors[k] for k in group]).reshape(len(group), -1)  # copies only channels-last
            if block.dtype not in _FLOATS:
                block = block.float()  # half-precision squares overflow
            norms.append(torch.linalg.vector_norm(block, dim=1))
            if maxabs:  # amax and amin: ~20x faster than aminmax(dim=1) or abs().amax(1) on the CPU
                maxes.append(torch.maximum(block.amin(1).neg_(), block.amax(1)))  # NaN propagates
        if layout.each:
            each = [tensors[k] for k in layout.each]
            if self.cpu and maxabs:
                norm, mx, _ = F.grad_stats(each, exact_nonfinite=False)
                norms.append(norm)
                maxes.append(mx)
            else:
                norms.append(F.norms(each, 2.0))
                if maxabs:
                    maxes.append(F.norms(each, float("inf")))
        norm = _join(norms, layout.inverse, self.device)
        return norm, (_join(maxes, layout.inverse, self.device) if maxabs else None)

    def _layout(self, tensors: Sequence[Tensor]) -> _Layout:
        by_shape: dict[tuple, list[int]] = {}
        if self.cpu:
            for k, t in enumerate(tensors):
                if 0 < t.numel() <= SMALL and t.device.type == "cpu" and t.is_floating_point():
                    by_shape.setdefault((tuple(t.shape), t.dtype), []).append(k)
        groups = [ks for ks in by_shape.values() if len(ks) > 1]
        flat = [k for ks in groups for k in ks]
        chosen = set(flat)
        each = [k for k in range(len(tensors)) if k not in chosen]
        order = flat + each
        inverse = None
        if order != list(range(len(tensors))):
            inv = [0] * len(order)
            for pos, k in enumerate(order):
                inv[k] = pos
            inverse = torch.tensor(inv, dtype=torch.long, device=self.device)  # once per layout
        return _Layout(groups, flat, each, inverse)


def _join(parts: list[Tensor], inverse: Tensor | None, device: torch.device) -> Tensor:
    out = parts[0] if len(parts) == 1 else torch.cat([p.to(device) for p in parts])
    out = out.to(device, torch.float32)
    return out if inverse is None else out.index_select(0, inverse)
