"""Deferred reductions of small tensors: many module outputs (or output gradients) summed in a fixed
number of torch calls instead of two or three calls each.

A hook on a small tensor only keeps a reference to it and its version counter. ``drain()`` copies
the pending tensors of each shape (and dtype) into one ``[count, size]`` matrix and takes the per-row
sum and sum of squares: a handful of calls whatever the number of tensors. At thousands of small
modules (large, MoE and LoRA models) the per-call dispatch, not the arithmetic, is what a per-tensor
reduction costs.

A tensor changed in place after its hook saw it (its version counter moved) is not measured: its tag
is reported so the caller measures that row at once from then on. Pending tensors are bounded
(``MAX_ELEMENTS`` elements, ``MAX_COUNT`` tensors): past either, the caller drains, so the memory
held beyond what autograd keeps anyway stays small, and so few tensor objects are held at a time that
they do not set off Python's garbage collector (holding thousands through a forward did: its full
collections cost ~4 % of a 5,000-tensor step). Large tensors are not deferred at all: their reading
costs more than a dispatch, so nothing is gained by batching them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter

import torch
from torch import Tensor

SMALL = 1 << 16  # elements: tensors up to this size are deferred
MAX_ELEMENTS = 1 << 22  # pending elements before the caller must drain (16 MB of fp32)
MAX_COUNT = 128  # pending tensors before the caller must drain: few enough that no GC collection runs meanwhile
_HALF = (torch.float16, torch.bfloat16)


@dataclass
class _Layout:
    runs: list[int]  # tensors per run of one shape
    order: list[int]  # positions in result order (grouped by shape)
    counts: tuple[int, ...]  # element count per result, in result order


@dataclass
class Drained:
    """The reductions of one drain, in result order (not the order tensors were added)."""

    tags: tuple[int, ...]
    counts: tuple[int, ...]  # elements per tensor
    sums: Tensor | None  # float32 [n], None when sums were not asked for
    sumsq: Tensor | None  # float32 [n], None when not asked for
    changed: list[int]  # tags of tensors changed in place after they were added (not measured)


_shape = attrgetter("shape")
_version = attrgetter("_version")


class _Pending:
    """The pending tensors of one dtype."""

    __slots__ = ("tags", "tensors", "versions")

    def __init__(self) -> None:
        self.tags: list[int] = []
        self.tensors: list[Tensor] = []
        self.versions: list[int] = []


class SmallBatch:
    """Small tensors waiting for their sums (``add``), reduced together by ``drain``.

    Only tensors on the batch's device are taken (``accepts`` says so); one stacked copy per shape and dtype.
    """

    def __init__(self, device: torch.device, *, sums: bool = True, sumsq: bool = True) -> None:
        self.device = device
        self._device_index = device.index if device.type != "cpu" else -1
        if device.type not in ("cpu", "cuda"):
            self._device_index = None  # other accelerators: compared by device object
        self.want_sums, self.want_sumsq = sums, sumsq
        self._layouts: dict[tuple[int, ...], _Layout] = {}
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[torch.dtype, _Pending] = {}
        self.count = 0
        self.elements = 0

    def __len__(self) -> int:
        return self.count

    def accepts(self, t: Tensor) -> bool:
        """Whether ``t`` can be batched: small, floating point, on the batch's device."""
        n = t.numel()
        if not (0 < n <= SMALL and t.is_floating_point()):
            return False
        if self._device_index is None:
            return t.device == self.device
        return t.get_device() == self._device_index

    def add(self, tag: int, t: Tensor) -> bool:
        """Keep ``t`` (``accepts(t)``) under ``tag``; True when the batch is full. ``t`` need not be
        detached (a detach costs a tensor object per call): it is read under no_grad."""
        part = self.pending.get(t.dtype)
        if part is None:
            part = self.pending[t.dtype] = _Pending()
        part.tags.append(tag)
        part.tensors.append(t)
        part.versions.append(t._version)
        self.count += 1
        self.elements += t.numel()
        return self.elements >= MAX_ELEMENTS or self.count >= MAX_COUNT

    def drain(self) -> Drained | None:
        """Reduce everything pending (None when nothing is) and start empty."""
        if not self.count:
            return None
        parts = self.pending.values()
        self._reset()
        tags: list[int] = []
        counts: list[int] = []
        sums: list[Tensor] = []
        sumsq: list[Tensor] = []
        changed: list[int] = []
        for part in parts:
            ptags, tensors = part.tags, part.tensors
            if list(map(_version, tensors)) != part.versions:
                moved = {k for k, (t, v) in enumerate(zip(tensors, part.versions, strict=True)) if t._version != v}
                changed += [ptags[k] for k in moved]
                ptags = [g for k, g in enumerate(ptags) if k not in moved]
                tensors = [t for k, t in enumerate(tensors) if k not in moved]
                if not tensors:
                    continue
            layout = self._layout(tensors)
            s, q = self._reduce(layout, tensors)
            tags += [ptags[k] for k in layout.order]
            counts += layout.counts
            sums += s
            sumsq += q
        if not tags:
            return Drained((), (), None, None, changed)
        return Drained(tuple(tags), tuple(counts),
                       _cat(sums, self.device) if self.want_sums else None,
                       _cat(sumsq, self.device) if self.want_sumsq else None, changed)

    @torch.no_grad()
    def _reduce(self, layout: _Layout, tensors: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        sums: list[Tensor] = []
        sumsq: list[Tensor] = []
        start = 0
        for count in layout.runs:
            run = tensors if count == len(tensors) else [tensors[k] for k in layout.order[start:start + count]]
            start += count
            # one copy of the run (stack is ~4x faster than flattening them on the CPU), two reductions
            block = torch.stack(run).reshape(count, -1)  # a copy only for channels-last runs
            acc = torch.float32 if block.dtype in _HALF else None  # half-precision squares overflow
            if self.want_sums:
                sums.append(block.sum(1, dtype=acc))
            if self.want_sumsq:
                sumsq.append(torch.linalg.vector_norm(block, dim=1, dtype=acc).square())
        return sums, sumsq

    def _layout(self, tensors: list[Tensor]) -> _Layout:
        """Positions grouped by shape; cached per pattern of shapes."""
        key = tuple(map(_shape, tensors))
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        if len(self._layouts) > 32:  # patterns that keep changing: do not grow without bound
            self._layouts.clear()
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, shape in enumerate(key):
            by_shape.setdefault(shape, []).append(k)
        runs = list(by_shape.values())
        order = [k for ks in runs for k in ks]
        counts = tuple(math.prod(key[k]) for k in order)
        layout = self._layouts[key] = _Layout([len(ks) for ks in runs], order, counts)
        return layout

    def clear(self) -> None:
        """Forget what is pending (the Scope closed)."""
        self._reset()


class Probation:
    """Tensors of tags not yet known to be safe to batch: measured in their hook meanwhile, and judged at
    the end of the pass (``settle``), since an output can be changed in place anywhere later in it."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.items: list[tuple[int, Tensor, int]] = []
        self.elements = 0

    def add(self, tag: int, t: Tensor) -> None:
        """Watch ``t``'s version until ``settle``; past ``MAX_ELEMENTS`` the tag waits for the next pass."""
        if self.elements < MAX_ELEMENTS:
            self.items.append((tag, t, t._version))
            self.elements += t.numel()

    def settle(self) -> list[tuple[int, bool]]:
        """(tag, whether its tensor kept its version) for each tensor watched; then start empty."""
        items = self.items
        self._reset()
        return [(tag, t._version == version) for tag, t, version in items]


def _cat(parts: list[Tensor], device: torch.device) -> Tensor:
    out = parts[0] if len(parts) == 1 else torch.cat([p.float().to(device) for p in parts])
    return out.to(device, torch.float32)
