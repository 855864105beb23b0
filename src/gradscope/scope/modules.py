"""The module side of a Scope: forward hooks (activation statistics, depth order) and hooks on each
module output's gradient (backward flow). Sums stay on the device until the step is committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradscope import functional as F
from gradscope.run.format import Row
from gradscope.scope import hooks
from gradscope.scope.accumulators import StepSums
from gradscope.scope.rows import ModuleInfo
from gradscope.scope.step import StepState
from gradscope.scope.traces import RNN_TYPES, Traces


class ModuleRecorder:
    """Activation and flow rows of the hooked modules, and the depth (first-forward order) of every
    module, which its parameter rows share."""

    def __init__(self, modules: list[tuple[nn.Module, ModuleInfo]], param_rows: list[Row], state: StepState,
                 begin_activity: Callable[[], None], *, activations: bool, flow: bool,
                 device: torch.device) -> None:
        self.modules = modules
        self.param_rows = param_rows
        self.state = state
        self.begin_activity = begin_activity
        self.activations, self.flow = activations, flow
        self.device = device
        self.act_rows: list[int] = []  # module index per act row
        self.sums = StepSums(device)
        self.next_depth = 0
        self.seen_fwd: set[int] = set()
        self.fwd_hooks: list[Any] = []
        self.flow_hooks: dict[int, Any] = {}
        self.traces = Traces(state, device)

    @property
    def hooked(self) -> bool:
        """Whether module hooks are attached at all (activations or flow asked for)."""
        return self.activations or self.flow

    def attach(self, handles: list[Any]) -> None:
        """Forward hooks on the hooked modules (built once, reused when re-attached)."""
        if not self.hooked:
            return
        if len(self.fwd_hooks) != len(self.modules):
            self.fwd_hooks = [hooks.forward_hook(self.on_forward, mi) for mi in range(len(self.modules))]
        for (module, _), hook in zip(self.modules, self.fwd_hooks, strict=True):
            handles.append(module.register_forward_hook(hook))

    def on_forward(self, mi: int, module: nn.Module, args: Any, output: Any) -> None:
        state = self.state
        if state.closed:
            return
        info = self.modules[mi][1]
        recompute = hooks.in_backward()  # activation checkpointing re-running forward in backward
        ranked = info.watched or bool(info.param_rows)  # containers without parameters get no depth
        if info.container and info.order is None and not recompute:
            self.traces.first_forward(info, self.next_depth)
        if ranked and info.depth is None and not recompute:
            self.assign_depth(mi, info)  # depth is call order, whatever the pass
        if not module.training or not torch.is_grad_enabled():
            return  # eval and no_grad passes are not training steps
        if not recompute:
            self.begin_activity()
        elif ranked and info.depth is None:
            self.assign_depth(mi, info)
        if not state.scheduled():
            return
        if info.container and not recompute:
            y = hooks.first_tensor(output)
            if y is not None:
                self.traces.on_output(info, y)
        if info.module_type in RNN_TYPES and not recompute:
            self.traces.on_rnn_input(mi, info.name, module, args)
        if info.act_row is None:
            return
        r = info.act_row
        if recompute and r in self.seen_fwd:
            return  # already counted in the forward pass (non-reentrant checkpointing)
        if not recompute:
            self.seen_fwd.add(r)
        y = hooks.first_tensor(output)
        if y is None:
            return
        if info.shape is None:
            info.shape = list(y.shape)
            state.rows_dirty = True
        self.record_activation(r, info.module_type, y)

    def record_activation(self, r: int, module_type: str, y: Tensor) -> None:
        if self.activations:
            self.sums.add_activation(r, y, module_type)
        if self.flow and y.requires_grad:
            # A tensor hook lives and dies with this step's graph; after close() it does nothing.
            hook = self.flow_hooks.get(r)
            if hook is None:
                hook = self.flow_hooks[r] = hooks.flow_hook(self.on_flow, r)
            y.register_hook(hook)

    def assign_depth(self, mi: int, info: ModuleInfo) -> None:
        info.depth = self.next_depth
        self.next_depth += 1
        for col in info.param_rows:
            self.param_rows[col].depth = info.depth
        if info.watched:
            info.act_row = len(self.act_rows)
            self.act_rows.append(mi)
            self.state.buffers.grow("act", len(self.act_rows))
            self.state.buffers.grow("flow", len(self.act_rows))
        self.state.rows_dirty = True

    def on_flow(self, r: int, grad: Tensor) -> None:
        if not self.state.closed:
            self.sums.add_flow(r, grad)

    def commit(self, slot: int) -> None:
        """Turn the step's activation and flow sums into statistics in its slot; reset the sums."""
        buffers = self.state.buffers
        act, flow, dead_index, dead_frac = self.sums.reduce(len(self.act_rows))
        if self.act_rows and self.activations:
            stats = F.activation_stats(act)
            for name in ("mean", "std", "zero_frac", "sat_frac", "nonfinite"):
                buffers.put("act", name, slot, stats[name].float())
            if dead_index is not None and dead_frac is not None:
                buffers.put("act", "dead_frac", slot, dead_frac, cols=dead_index)
        if self.act_rows and self.flow:
            calls, sumsq, nonfinite = flow.unbind(1)
            hit = calls > 0
            buffers.put("flow", "norm", slot, torch.where(hit, sumsq.sqrt(), torch.nan).float())
            buffers.put("flow", "nonfinite", slot, torch.where(hit, nonfinite, torch.nan).float())
        self.traces.commit(slot)
        self.seen_fwd.clear()

    def rows(self) -> list[Row]:
        """The act and flow rows for the manifest (in act-row order)."""
        act = [self.modules[mi][1] for mi in self.act_rows]
        out: list[Row] = []
        if self.activations:
            out += [Row(m.name, "act", m.module_type, m.shape or [], m.depth) for m in act]
        if self.flow:
            out += [Row(m.name, "flow", m.module_type, m.shape or [], m.depth) for m in act]
        return out

    def close(self) -> None:
        """Drop hook closures, modules and device sums (the Scope removed the handles)."""
        self.fwd_hooks, self.flow_hooks = [], {}
        self.modules = []
        self.sums = StepSums(self.device)
