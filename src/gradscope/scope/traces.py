"""Two recordings of the module side that the per-row statistics cannot give:

- NaN/Inf made by a container's own maths (a block that adds, scales or normalises between its
  children): the sum of each container's output, one reduction per call, and per step the
  first-forward order of the earliest container whose output went non-finite (scalar
  ``nonfinite_container``; -1 when none). Small outputs are summed together at the step's commit
  (:mod:`gradscope.scope.batched`), large ones in the hook. The diagnosis compares it with the first non-finite
  leaf, so the origin names the block, not the next leaf that passes the NaN on.
- Gradients through time in recurrent modules (nn.RNN/LSTM/GRU): the gradient reaching the
  module's input at the first and at the last time step (scalars ``rnn_grad_first/NAME`` and
  ``rnn_grad_last/NAME``), when that input requires grad (e.g. it comes from an embedding).

Everything stays on the device until the flush; nothing here syncs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradscope.scope import hooks
from gradscope.scope.batched import Probation, SmallBatch
from gradscope.scope.rows import ModuleInfo
from gradscope.scope.step import StepState

RNN_TYPES = frozenset({"RNN", "LSTM", "GRU"})


class Traces:
    """Container NaN checks and RNN through-time gradients (see the module docstring)."""

    def __init__(self, state: StepState, device: torch.device) -> None:
        self.state, self.device = state, device
        self.containers: list[ModuleInfo] = []
        self.sums = torch.zeros(0, device=device)
        self.order = torch.zeros(0, device=device)
        self.rnns: list[str] = []
        self.rnn_sq = torch.zeros((0, 2), device=device)
        self.rnn_hooks: list[Any] = []
        self.rnn_index: dict[int, int] = {}
        self.rnn_seen = False
        self.batch = SmallBatch(device, sumsq=False)
        self.batched: list[tuple[tuple[int, ...], Tensor]] = []  # drained (containers, sums)
        self.index_cache: dict[tuple[int, ...], Tensor] = {}
        self.batched_ok: dict[int, bool] = {}  # container order -> whether its outputs are batched
        self.probation = Probation()

    # -- containers -----------------------------------------------------------------------------
    def first_forward(self, info: ModuleInfo, next_depth: int) -> None:
        """Give a container its order (post-order, as depth) and the depth of the leaf before it."""
        info.order = len(self.containers)
        info.after_depth = next_depth - 1
        self.containers.append(info)
        self.sums = torch.cat([self.sums, torch.zeros(1, device=self.device)])
        self.order = torch.arange(len(self.containers), device=self.device, dtype=torch.float32)
        self.state.rows_dirty = True

    def on_output(self, info: ModuleInfo, y: Tensor) -> None:
        k = info.order
        assert k is not None
        batched = self.batched_ok.get(k)  # None: on probation (measured now, its version checked)
        if batched and self.batch.accepts(y):
            if self.batch.add(k, y):
                self.drain()
            return
        self.sums[k:k + 1].add_(torch.sum(y.detach(), dtype=torch.float32).reshape(1))
        if batched is None:
            if not self.batch.accepts(y):
                self.batched_ok[k] = False
            else:
                self.probation.add(k, y)

    def settle(self) -> None:
        """Containers on probation whose outputs kept their version through the pass are batched."""
        for k, kept in self.probation.settle():
            self.batched_ok[k] = self.batched_ok.get(k, True) and kept

    def drain(self) -> None:
        """Sum the batched container outputs."""
        done = self.batch.drain()
        if done is None:
            return
        for k in done.changed:
            self.batched_ok[k] = False
        if done.tags:
            assert done.sums is not None
            self.batched.append((done.tags, done.sums))

    # -- recurrent modules ----------------------------------------------------------------------
    def on_rnn_input(self, mi: int, name: str, module: nn.Module, args: Any) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor) or not x.requires_grad or x.dim() != 3:
            return  # packed sequences, unbatched input, or an input without gradient
        k = self.rnn_index.get(mi)
        if k is None:
            k = self.rnn_index[mi] = len(self.rnns)
            self.rnns.append(name)
            self.rnn_sq = torch.cat([self.rnn_sq, torch.zeros((1, 2), device=self.device)])
            self.rnn_hooks.append(hooks.grad_hook(self._rnn_grad(k, bool(getattr(module, "batch_first", False)))))
        x.register_hook(self.rnn_hooks[k])
        self.rnn_seen = True

    def _rnn_grad(self, k: int, batch_first: bool) -> Any:
        def on_grad(g: Tensor) -> None:
            if self.state.closed:
                return
            first, last = (g[:, 0], g[:, -1]) if batch_first else (g[0], g[-1])
            sq = torch.stack([first.detach().float().pow(2).sum(), last.detach().float().pow(2).sum()])
            self.rnn_sq[k].add_(sq.to(self.rnn_sq.device))

        return on_grad

    # -- step -----------------------------------------------------------------------------------
    def commit(self, slot: int) -> None:
        buffers = self.state.buffers
        self.settle()
        self.drain()
        if self.batched:
            tags = tuple(t for tags, _ in self.batched for t in tags)
            idx = self.index_cache.get(tags)
            if idx is None:  # built once per pattern: a host-to-device copy
                if len(self.index_cache) > 32:
                    self.index_cache.clear()
                idx = self.index_cache[tags] = torch.tensor(tags, dtype=torch.long).to(self.device)
            values = self.batched[0][1] if len(self.batched) == 1 else torch.cat([v for _, v in self.batched])
            self.sums.index_add_(0, idx, values.to(self.sums.dtype))
            self.batched = []
        if self.containers:
            bad = ~torch.isfinite(self.sums)
            first = torch.where(bad, self.order, torch.inf).min()
            buffers.put_scalar("nonfinite_container", slot, torch.where(torch.isinf(first), -1.0, first))
            self.sums.zero_()
        if self.rnn_seen:
            norms = self.rnn_sq.sqrt()
            for k, name in enumerate(self.rnns):
                buffers.put_scalar(f"rnn_grad_first/{name}", slot, norms[k, 0])
                buffers.put_scalar(f"rnn_grad_last/{name}", slot, norms[k, 1])
            self.rnn_sq.zero_()
            self.rnn_seen = False

    def describe(self) -> list[dict[str, Any]]:
        """The containers for the manifest: name, module type, order, depth of the leaf before it."""
        return [{"name": c.name, "module_type": c.module_type, "order": c.order, "after_depth": c.after_depth}
                for c in self.containers]
