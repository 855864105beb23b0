"""The module side of a Scope: forward hooks (activation statistics, depth order) and hooks on each
module output's gradient (backward flow). Sums stay on the device until the step is committed.

Cost per watched module and recorded step: one forward hook call, one pre-hook registered on the
output's autograd node (``grad_fn.register_prehook``: about half of ``Tensor.register_hook``'s cost)
and its call in backward. Small outputs and output gradients (``batched.SMALL`` elements) are only
kept by their hooks and reduced together (:mod:`gradscope.scope.batched`), at the end of each
backward, at the step's commit, or when too many are pending; larger ones, and ReLU-like and bounded
outputs (zeros, dead units, saturation), are reduced in the hook. An output is batched only after
its first recorded call proved that nothing modifies it in place before the batch is read (its
version counter); one that is modified later is measured in its hook from then on.
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
from gradscope.scope.batched import Probation, SmallBatch
from gradscope.scope.rows import ModuleInfo
from gradscope.scope.step import StepState
from gradscope.scope.traces import RNN_TYPES, Traces

_graph_task_id = torch._C._current_graph_task_id
_grad_enabled = torch.is_grad_enabled
PROBATION, BATCHED, EAGER = 0, 1, 2  # how an act row's outputs are measured (see the module docstring)


class ModuleRecorder:
    """Activation and flow rows of the hooked modules, and the depth (first-forward order) of every
    module, which its parameter rows share."""

    def __init__(self, modules: list[tuple[nn.Module, ModuleInfo]], param_rows: list[Row], state: StepState,
                 begin_activity: Callable[[], None], *, activations: bool, flow: bool,
                 device: torch.device, root: nn.Module | None = None) -> None:
        self.modules = modules
        # Whether a pass trains is the watched model's mode, not each module's: a backbone left in eval
        # mode (from_pretrained returns one) inside a model that trains still runs in its training steps.
        self.root = root
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
        self.hook_entries: hooks.HookEntries | None = None  # the forward hooks, once registered
        self.flow_hooks: dict[int, Any] = {}
        self.flow_prehooks: dict[tuple[int, int], Any] = {}
        self.traces = Traces(state, device)
        self.mode: list[int] = []  # per act row: PROBATION, BATCHED or EAGER
        self.probation = Probation()  # outputs of rows on probation, judged at the end of the pass
        self.act_batch = SmallBatch(device)
        self.flow_batch = SmallBatch(device, sums=False)
        self.flow_cb_queued = False

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
        if self.hook_entries is None:
            entries = []
            for (module, _), hook in zip(self.modules, self.fwd_hooks, strict=True):
                handle = module.register_forward_hook(hook)
                entries.append((module, handle.id, hook))
            self.hook_entries = hooks.HookEntries(entries)
        else:  # every=N: the same entries back, without 5,000 handle objects per cycle
            self.hook_entries.attach()
        handles.append(self.hook_entries)

    def on_forward(self, mi: int, module: nn.Module, args: Any, output: Any) -> None:
        # Runs once per hooked module call: kept flat (each Python call here costs ~1 % at 5,000 modules).
        state = self.state
        if state.closed:
            return
        info = self.modules[mi][1]
        recompute = _graph_task_id() != -1  # activation checkpointing re-running forward in backward
        if info.depth is None or (info.container and info.order is None):
            self.first_calls(mi, info, recompute)
        root = self.root  # inlined self.training(module): this runs once per module call
        if not ((module if root is None else root).training or state.eval_trains) or not _grad_enabled():
            return  # eval and no_grad passes of the watched model are not training steps
        if not recompute and state.stepped:
            self.begin_activity()
        if state.index % state.every:
            return  # not a recorded step
        y = output if type(output) is Tensor else None
        if info.container and not recompute:
            y = hooks.first_tensor(output) if y is None else y
            if y is not None and y.is_floating_point():
                self.traces.on_output(info, y)
        if info.module_type in RNN_TYPES and not recompute:
            self.traces.on_rnn_input(mi, info.name, module, args)
        r = info.act_row
        if r is None:
            return
        seen = self.seen_fwd
        if recompute:
            if r in seen:
                return  # already counted in the forward pass (non-reentrant checkpointing)
        else:
            seen.add(r)
        y = hooks.first_tensor(output) if y is None else y
        if y is None or not y.is_floating_point():
            return
        if info.shape is None:
            info.shape = list(y.shape)
            state.rows_dirty = True
        self.record_activation(r, info.module_type, y)

    def first_calls(self, mi: int, info: ModuleInfo, recompute: bool) -> None:
        """A module's first calls: its container order and depth (call order, whatever the pass)."""
        ranked = info.watched or bool(info.param_rows)  # containers without parameters get no depth
        if info.container and info.order is None and not recompute:
            self.traces.first_forward(info, self.next_depth)
        if ranked and info.depth is None and (not recompute or (self.training(self.modules[mi][0])
                                                               and _grad_enabled())):
            self.assign_depth(mi, info)

    def training(self, module: nn.Module) -> bool:
        """Whether a pass through ``module`` trains: the watched model's mode (see ``root``)."""
        return self.state.trains(module if self.root is None else self.root)

    def record_activation(self, r: int, module_type: str, y: Tensor) -> None:
        if self.activations:
            mode = self.mode[r]
            if mode == BATCHED and self.act_batch.accepts(y):
                if self.act_batch.add(r, y):
                    self.drain()
            else:
                self.sums.add_activation(r, y, module_type)
                if mode == PROBATION:
                    if (not self.act_batch.accepts(y) or module_type in F.DEAD_UNIT_TYPES
                            or module_type in F.BOUNDED_RANGES):
                        self.mode[r] = EAGER
                    else:
                        self.probation.add(r, y)
        if self.flow and y.requires_grad:
            # Hooks live and die with this step's graph; after close() they do nothing. A pre-hook on
            # the output's autograd node gets the same gradient as a tensor hook on the output (for an
            # output changed in place later, the gradient of the value the module returned) for about
            # half the cost of registering a tensor hook.
            node = y.grad_fn
            if node is None:  # a leaf (a module returning a parameter or its input)
                hook = self.flow_hooks.get(r)
                if hook is None:
                    hook = self.flow_hooks[r] = hooks.flow_hook(self.on_flow, r)
                y.register_hook(hook)
                return
            key = (r, y.output_nr)
            pre = self.flow_prehooks.get(key)
            if pre is None:
                pre = self.flow_prehooks[key] = hooks.flow_prehook(self.on_flow, r, y.output_nr)
            node.register_prehook(pre)

    def assign_depth(self, mi: int, info: ModuleInfo) -> None:
        info.depth = self.next_depth
        self.next_depth += 1
        for col in info.param_rows:
            self.param_rows[col].depth = info.depth
        if info.watched:
            info.act_row = len(self.act_rows)
            self.act_rows.append(mi)
            self.mode.append(PROBATION)
            self.state.buffers.grow("act", len(self.act_rows))
            self.state.buffers.grow("flow", len(self.act_rows))
        self.state.rows_dirty = True

    def on_flow(self, r: int, grad: Tensor) -> None:
        if self.state.closed:
            return
        if not self.flow_cb_queued:
            self.flow_cb_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.on_backward_end)
        if self.flow_batch.accepts(grad):
            if self.flow_batch.add(r, grad):
                self.drain_flow()
        else:
            self.sums.add_flow(r, grad)

    def on_backward_end(self) -> None:
        """Reduce the output gradients (and any outputs) still waiting: nothing is held past a backward."""
        self.flow_cb_queued = False
        if not self.state.closed:
            self.settle()
            self.drain()
            self.drain_flow()
            self.traces.drain()

    def settle(self) -> None:
        """Rows on probation whose outputs kept their version through the whole pass are batched from
        now on. Only after the pass: an output can be changed in place anywhere later in it."""
        for r, kept in self.probation.settle():
            if self.mode[r] == PROBATION:
                self.mode[r] = BATCHED if kept else EAGER
            elif not kept:  # a row called twice in the pass, the second output changed
                self.mode[r] = EAGER
        self.traces.settle()

    def drain(self) -> None:
        """Measure the batched outputs."""
        done = self.act_batch.drain()
        if done is None:
            return
        for r in done.changed:  # changed in place after the hook: lost this once, measured at once from now on
            self.mode[r] = EAGER
        if done.tags:
            assert done.sums is not None and done.sumsq is not None
            self.sums.add_activation_batch(done.tags, done.counts, done.sums, done.sumsq)

    def drain_flow(self) -> None:
        done = self.flow_batch.drain()
        if done is not None and done.tags:
            assert done.sumsq is not None
            self.sums.add_flow_batch(done.tags, done.sumsq)

    def commit(self, slot: int) -> None:
        """Turn the step's activation and flow sums into statistics in its slot; reset the sums."""
        buffers = self.state.buffers
        self.settle()
        self.drain()
        self.drain_flow()
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
        self.fwd_hooks, self.flow_hooks, self.flow_prehooks = [], {}, {}
        self.hook_entries = None
        self.modules = []
        self.root = None
        self.probation = Probation()
        self.act_batch.clear()
        self.flow_batch.clear()
        self.sums = StepSums(self.device)
