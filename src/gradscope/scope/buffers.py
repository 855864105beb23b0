"""Device-resident per-step statistics and their batched, non-blocking hand-off to the host.

Each metric is a [capacity x rows] float32 tensor on the watched model's device, NaN where nothing
was recorded. Writing a step is an indexed copy on the device; only ``take`` moves data to the host,
once per ``capacity`` steps. Scalars given as Python numbers (the learning rate, ``scope.log(acc=0.9)``)
stay on the host: writing one into a device tensor would be a blocking host-to-device copy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from gradscope.run import format as fmt


class StepBuffers:
    """The statistics of up to ``capacity`` steps, one slot per recorded step."""

    def __init__(self, capacity: int, device: torch.device, widths: dict[str, int]) -> None:
        self.capacity = capacity
        self.device = device
        self.widths = dict(widths)
        self.steps: list[int] = []
        self.wall: list[float] = []  # host wall time of each slot's step (seconds since ``origin``)
        self.origin = time.time()
        self._metrics: dict[str, Tensor] = {}
        self._scalars: dict[str, Tensor] = {}
        self._host_scalars: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) >= self.capacity

    def open_slot(self, step: int) -> int:
        """Reserve the next slot for ``step`` and return its index."""
        self.steps.append(step)
        self.wall.append(math.nan)
        return len(self.steps) - 1

    def stamp(self, slot: int) -> None:
        """Record the host wall time of the slot's step now (a host clock read: no device sync)."""
        self.wall[slot] = time.time() - self.origin

    def grow(self, kind: str, width: int) -> None:
        """Rows of ``kind`` now number ``width`` (rows are only ever appended)."""
        old = self.widths.get(kind, 0)
        if width <= old:
            return
        self.widths[kind] = width
        for name in fmt.METRICS[kind]:
            key = fmt.metric_key(kind, name)
            t = self._metrics.get(key)
            if t is not None:
                pad = torch.full((self.capacity, width - old), torch.nan, device=self.device)
                self._metrics[key] = torch.cat([t, pad], dim=1)

    def metric(self, kind: str, name: str) -> Tensor:
        key = fmt.metric_key(kind, name)
        t = self._metrics.get(key)
        if t is None:
            t = torch.full((self.capacity, self.widths.get(kind, 0)), torch.nan, device=self.device)
            self._metrics[key] = t
        return t

    def put(self, kind: str, name: str, slot: int, values: Tensor, cols: Tensor | None = None) -> None:
        """Write ``values`` into a slot: all leading columns, or the columns ``cols`` (device index)."""
        row = self.metric(kind, name)[slot]
        if cols is None:
            row[: values.shape[0]].copy_(values)
        else:
            row.index_copy_(0, cols, values.to(row.dtype))

    def put_scalar(self, name: str, slot: int, value: Tensor | float) -> None:
        """A per-step scalar: a tensor is copied on its device, a Python number stays on the host."""
        if not isinstance(value, Tensor):
            host = self._host_scalars.get(name)
            if host is None:
                host = self._host_scalars[name] = np.full(self.capacity, np.nan, dtype=np.float32)
            host[slot] = value
            return
        t = self._scalars.get(name)
        if t is None:
            t = torch.full((self.capacity,), torch.nan, device=self.device)
            self._scalars[name] = t
        t[slot].copy_(value.detach().reshape(()))

    def filled(self) -> dict[str, Tensor]:
        """Views of the filled slots of every metric array (for in-place reductions before take)."""
        n = len(self.steps)
        return {k: v[:n] for k, v in self._metrics.items()}

    def take(self) -> Callable[[], dict[str, np.ndarray]]:
        """Start the copy of the filled slots to the host and reset; the returned callable finishes it.

        On CUDA the copy is non-blocking into pinned memory and the callable waits on an event, so
        the training thread never waits for it (the writer thread does).
        """
        n = len(self.steps)
        steps = np.asarray(self.steps, dtype=np.int64)
        wall = np.asarray(self.wall, dtype=np.float32)
        named = {k: v[:n] for k, v in self._metrics.items()}
        named.update({fmt.scalar_key(k): v[:n] for k, v in self._scalars.items()})
        host_scalars = {fmt.scalar_key(k): v[:n] for k, v in self._host_scalars.items()}
        self.steps, self.wall = [], []
        self._metrics = {}
        self._scalars = {}
        self._host_scalars = {}
        if self.device.type == "cuda":
            host = {k: v.to("cpu", non_blocking=True) for k, v in named.items()}
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = named, None  # CPU: hand the tensors over, fresh ones are allocated

        def finish() -> dict[str, np.ndarray]:
            if event is not None:
                event.synchronize()  # waits on the writer thread, never on the training thread
            out = {"step": steps, fmt.scalar_key(fmt.WALL_TIME): wall}
            out.update({k: v.numpy().astype(np.float32, copy=False) for k, v in host.items()})
            for k, values in host_scalars.items():  # a name logged as tensors on some steps, numbers on others
                out[k] = np.where(np.isnan(values), out[k], values) if k in out else values
            return out

        return finish
