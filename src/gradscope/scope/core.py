"""Scope: watches a model (and optimizer), keeps per-step statistics on the device, writes the run.

Life of a step: forward hooks add activation sums; output-gradient hooks add backward-flow sums;
at the end of each backward the parameter gradients are measured (so they are pre-clip); the
optimizer's step hook writes them into the step's slot. The step closes at the next training
activity, and every ``flush_every`` steps the slots go to the writer thread in one copy.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope import functional as F
from gradscope.run import format as fmt
from gradscope.run.format import Row
from gradscope.run.writer import NullWriter, RunWriter
from gradscope.scope import amp, distributed, hooks
from gradscope.scope.accumulators import StepSums
from gradscope.scope.buffers import StepBuffers
from gradscope.scope.param_hooks import ParamRecording
from gradscope.scope.rows import plan
from gradscope.scope.setup import check_args, make_atexit, make_sinks, prepare_dir


class Scope(ParamRecording):
    """A watched training run. Create with :func:`gradscope.watch`; use as a context manager."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        every: int = 1,
        flush_every: int = 100,
        activations: bool = True,
        flow: bool = True,
        update_every: int = 10,
        overwrite: bool = False,
        tensorboard: bool | None = None,
        scaler: torch.amp.GradScaler | None = None,
        compact: bool = True,
    ) -> None:
        check_args(model, optimizer, every, flush_every, update_every, include, exclude)
        self._compiled = hasattr(model, "_orig_mod")
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd module: name rows as the original
        self._rank0 = distributed.rank() == 0
        self.log_dir = prepare_dir(log_dir, overwrite) if self._rank0 else Path(log_dir or ".")
        self.every, self.flush_every, self.update_every = every, flush_every, update_every
        self.activations, self.flow = activations, flow
        self._model: nn.Module | None = model
        opts = [] if optimizer is None else list(optimizer) if isinstance(optimizer, Sequence) else [optimizer]
        self._optimizers: list[torch.optim.Optimizer] = opts
        self._named, watched, self._rows, hooked = plan(model, include, exclude)
        self._params = [p for _, p in self._named]
        self._watched = [self._params[i] for i in watched]
        self._col_of = {i: c for c, i in enumerate(watched)}
        self._trainable = [i for i, p in enumerate(self._params) if p.requires_grad]
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._modules = hooked
        self._handles: list[Any] = []
        self._act_rows: list[int] = []  # module index per act row
        self._sums = StepSums(self._device)
        self._next_depth = 0
        self._step = 0
        self._stepped = False
        self._slot: int | None = None
        self._cb_queued = False
        self._pending: tuple[tuple[int, ...], Tensor, Tensor, Tensor] | None = None
        self._snapshots: dict[int, list[Tensor]] = {}
        self._index_cache: dict[tuple[int, ...], Tensor] = {}
        self._opt_cols_cache: dict[tuple[int, int], list[int]] = {}
        self._events: list[dict[str, Any]] = []
        self._rows_dirty = True
        self._in_flush = False
        self._closed = False
        self._buffers = StepBuffers(flush_every, self._device, {"param": len(self._rows)})
        self._writer: RunWriter | NullWriter = (
            RunWriter(self.log_dir, make_sinks(self.log_dir, tensorboard), compact=compact)
            if self._rank0 else NullWriter()
        )
        self._scaler = scaler
        self._seen_fwd: set[int] = set()
        self._clip_fed = False  # set once gradscope.clip hands us its statistics
        self._config = {
            "include": list(include) if include is not None else None,
            "exclude": list(exclude) if exclude is not None else None,
            "every": every, "flush_every": flush_every, "update_every": update_every,
            "activations": activations, "flow": flow, "optimizers": len(opts),
            "model": type(model).__name__, "started": time.time(),
            "world_size": distributed.world_size(), "amp": scaler is not None,
        }
        self._env = fmt.environment()
        self._write_manifest()
        self._attach()
        self._atexit = make_atexit(weakref.ref(self))
        atexit.register(self._atexit)

    # -- public ---------------------------------------------------------------------------------
    @property
    def step_index(self) -> int:
        """Index of the step being recorded now (optimizer steps since watch())."""
        return self._step

    def log(self, **scalars: Tensor | float) -> None:
        """Record per-step scalars (loss, accuracy, ...). Tensors stay on the device: no sync."""
        if self._closed or not self._scheduled():
            return
        slot = self._ensure_slot()
        for name, value in scalars.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(f"scope.log({name}=...) needs a scalar, got a tensor of shape "
                                     f"{tuple(value.shape)}: reduce it first, e.g. .mean()")
                value = value.detach().to(self._device)
            elif not isinstance(value, (int, float)):
                raise TypeError(f"scope.log({name}=...) needs a number or a scalar tensor, "
                                f"got {type(value).__name__}")
            self._buffers.put_scalar(name, slot, value)

    def event(self, kind: str, **data: Any) -> None:
        """Record a discrete event (plain Python values) at the current step."""
        self._events.append({"step": self._step, "kind": kind, **data})

    def step(self) -> None:
        """Close the current step by hand; only for watch() without an optimizer."""
        if self._optimizers:
            raise RuntimeError("watch() was given an optimizer, so steps are recorded at optimizer.step(); "
                               "do not call scope.step() as well")
        if self._closed:
            return
        self._begin_activity()
        if self._scheduled():
            self._record_params()
        self._mark_stepped()

    def flush(self, wait: bool = False) -> None:
        """Close the step if the optimizer has stepped, and hand recorded steps to the writer."""
        if self._closed:
            return
        if self._stepped:
            self._advance(flush=False)
        self._flush()
        if wait:
            self._writer.drain()

    def close(self) -> None:
        """Flush everything, wait for the writer, remove every hook and drop every reference."""
        if self._closed:
            return
        if self._slot is not None:
            self._commit_step()
        self._flush()
        self._closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._detach_step_hooks()
        self._fwd_hooks, self._flow_hooks, self._acc_hook = [], {}, None
        self._writer.close()
        atexit.unregister(self._atexit)
        self._model = None
        self._optimizers = []
        self._named, self._params, self._watched, self._modules = [], [], [], []
        self._pending, self._snapshots, self._index_cache = None, {}, {}
        self._sums = StepSums(self._device)

    @property
    def write_errors(self) -> list[str]:
        """Errors the writer met (disk full, permissions); empty when everything was written."""
        sinks = getattr(self._writer, "sinks", [])
        return list(self._writer.errors) + [e for s in sinks for e in getattr(s, "errors", [])]

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.event("exception", type=exc_type.__name__, message=str(exc)[:500])
        self.close()

    # -- attach ---------------------------------------------------------------------------------
    def _attach(self) -> None:
        module_hooks = self.activations or self.flow
        # With every > 1 the per-module and per-parameter hooks are attached only for recorded steps
        # (hook dispatch alone costs ~1 % of a small model's step); one pre-hook on the root module
        # then marks where a step begins. A compiled model keeps its hooks (each change recompiles).
        self._toggle = module_hooks and self.every > 1 and self._model is not None and not self._compiled
        self._step_handles: list[Any] = []
        self._fwd_hooks: list[Any] = []
        self._flow_hooks: dict[int, Any] = {}
        self._acc_hook: Any = None
        self._root_seen = False
        if not module_hooks:
            # No module hooks at all (nothing to break a torch.compile graph): parameter depth then
            # comes from the order gradients arrive in the first backward, reversed.
            self._grad_order: list[int] = []
            self._param_index = {id(p): i for i, p in enumerate(self._params)}
        self._attach_step_hooks()
        if self._toggle:
            assert self._model is not None
            self._handles.append(self._model.register_forward_pre_hook(hooks.root_pre_hook(self)))
        for opt in self._optimizers:
            self._handles.append(opt.register_step_pre_hook(hooks.optimizer_pre_hook(self)))
            self._handles.append(opt.register_step_post_hook(hooks.optimizer_post_hook(self)))
        if self._scaler is not None:
            self._handles.append(amp.ScalerPatch(self._scaler, self._on_scaler_update))
        from gradscope.clip import add_listener

        self._handles.append(add_listener(self._on_clip, wants_full=self._clip_wants_full))

    def _attach_step_hooks(self) -> None:
        """Forward hooks on the watched modules and gradient hooks on the trainable parameters."""
        if self.activations or self.flow:
            if len(self._fwd_hooks) != len(self._modules):
                self._fwd_hooks = [hooks.forward_hook(self, mi) for mi in range(len(self._modules))]
            for (module, _), hook in zip(self._modules, self._fwd_hooks, strict=True):
                self._step_handles.append(module.register_forward_hook(hook))
        if self._acc_hook is None:
            self._acc_hook = hooks.accumulate_grad_hook(self)
        for i in self._trainable:
            self._step_handles.append(self._params[i].register_post_accumulate_grad_hook(self._acc_hook))

    def _detach_step_hooks(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()

    def _mark_stepped(self) -> None:
        """The optimizer stepped: the step closes at the next activity. Hooks follow the schedule."""
        self._stepped = True
        if self._toggle and not self._root_seen:
            # The loop calls submodules, not the model: without the root pre-hook nothing would mark
            # where an unrecorded step starts, so the hooks stay on.
            self._toggle = False
        if self._toggle and not self._closed:
            wanted = (self._step + 1) % self.every == 0
            if wanted and not self._step_handles:
                self._attach_step_hooks()
            elif not wanted and self._step_handles:
                self._detach_step_hooks()

    def _on_root_forward(self) -> None:
        """A forward of the whole model (hooks detached): a training forward begins a new step."""
        self._root_seen = True
        if self._closed or self._model is None or not self._model.training or not torch.is_grad_enabled():
            return
        if not hooks.in_backward():
            self._begin_activity()

    # -- step bookkeeping -----------------------------------------------------------------------
    def _scheduled(self) -> bool:
        return self._step % self.every == 0

    def _update_sampled(self) -> bool:
        return self._scheduled() and (self._step // self.every) % self.update_every == 0

    def _ensure_slot(self) -> int:
        if self._slot is None:
            self._slot = self._buffers.open_slot(self._step)
        return self._slot

    def _begin_activity(self) -> None:
        if self._stepped:
            self._advance(flush=True)

    def _advance(self, flush: bool) -> None:
        if self._slot is not None:
            self._commit_step()
        self._step += 1
        self._stepped = False
        self._slot = None
        if flush and self._buffers.full:
            self._flush()

    def _commit_step(self) -> None:
        """Turn the step's activation and flow sums into statistics in its slot; reset the sums."""
        slot = self._slot
        assert slot is not None
        act, flow, dead_index, dead_frac = self._sums.reduce(len(self._act_rows))
        if self._act_rows and self.activations:
            stats = F.activation_stats(act)
            for name in ("mean", "std", "zero_frac", "sat_frac", "nonfinite"):
                self._buffers.put("act", name, slot, stats[name].float())
            if dead_index is not None and dead_frac is not None:
                self._buffers.put("act", "dead_frac", slot, dead_frac, cols=dead_index)
        if self._act_rows and self.flow:
            calls, sumsq, nonfinite = flow.unbind(1)
            hit = calls > 0
            self._buffers.put("flow", "norm", slot, torch.where(hit, sumsq.sqrt(), torch.nan).float())
            self._buffers.put("flow", "nonfinite", slot, torch.where(hit, nonfinite, torch.nan).float())
        self._seen_fwd.clear()

    def _flush(self) -> None:
        self._in_flush = True  # host copies below are the one deliberate sync point
        try:
            if self._rows_dirty:
                self._write_manifest()
            if len(self._buffers):
                if distributed.world_size() > 1:
                    distributed.reduce_nonfinite(self._buffers.filled())
                finish = self._buffers.take()
                self._writer.submit(lambda: self._writer.write_chunk(finish()))
            if self._events:
                events, self._events = self._events, []
                self._writer.submit(lambda: self._writer.write_events(events))
        finally:
            self._in_flush = False

    def _write_manifest(self) -> None:
        act = [self._modules[mi][1] for mi in self._act_rows]
        rows = list(self._rows)
        if self.activations:
            rows += [Row(m.name, "act", m.module_type, m.shape or [], m.depth) for m in act]
        if self.flow:
            rows += [Row(m.name, "flow", m.module_type, m.shape or [], m.depth) for m in act]
        manifest = fmt.make_manifest(rows, self._config, self._env)
        self._writer.submit(lambda: self._writer.write_manifest(manifest))
        self._rows_dirty = False

    # -- hooks (called from hooks.py) ------------------------------------------------------------
    def _on_forward(self, mi: int, module: nn.Module, output: Any) -> None:
        if self._closed:
            return
        info = self._modules[mi][1]
        recompute = hooks.in_backward()  # activation checkpointing re-running forward in backward
        if info.depth is None and not recompute:
            self._assign_depth(mi, info)  # depth is call order, whatever the pass
        if not module.training or not torch.is_grad_enabled():
            return  # eval and no_grad passes are not training steps
        if not recompute:
            self._begin_activity()
        elif info.depth is None:
            self._assign_depth(mi, info)
        if info.act_row is None or not self._scheduled():
            return
        r = info.act_row
        if recompute and r in self._seen_fwd:
            return  # already counted in the forward pass (non-reentrant checkpointing)
        if not recompute:
            self._seen_fwd.add(r)
        y = hooks.first_tensor(output)
        if y is None:
            return
        if info.shape is None:
            info.shape = list(y.shape)
            self._rows_dirty = True
        self._record_activation(r, info.module_type, y)

    def _record_activation(self, r: int, module_type: str, y: Tensor) -> None:
        if self.activations:
            self._sums.add_activation(r, y, module_type)
        if self.flow and y.requires_grad:
            # A tensor hook lives and dies with this step's graph; after close() it does nothing.
            hook = self._flow_hooks.get(r)
            if hook is None:
                hook = self._flow_hooks[r] = hooks.flow_hook(self, r)
            y.register_hook(hook)

    def _assign_depth(self, mi: int, info: Any) -> None:
        info.depth = self._next_depth
        self._next_depth += 1
        for col in info.param_rows:
            self._rows[col].depth = info.depth
        if info.watched:
            info.act_row = len(self._act_rows)
            self._act_rows.append(mi)
            self._buffers.grow("act", len(self._act_rows))
            self._buffers.grow("flow", len(self._act_rows))
        self._rows_dirty = True

    def _on_flow(self, r: int, grad: Tensor) -> None:
        if not self._closed:
            self._sums.add_flow(r, grad)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    every: int = 1,
    flush_every: int = 100,
    activations: bool = True,
    flow: bool = True,
    update_every: int = 10,
    overwrite: bool = False,
    tensorboard: bool | None = None,
    scaler: torch.amp.GradScaler | None = None,
    compact: bool = True,
) -> Scope:
    """Watch ``model`` (and ``optimizer``): record gradient and activation health to ``log_dir``.

    ``include``/``exclude`` are glob patterns on parameter and module names; ``every`` records every
    N-th optimizer step; ``update_every`` samples the update ratio (it needs a weight copy) every N
    recorded steps; ``flush_every`` steps are copied to the host and written at once;
    ``scaler``: the GradScaler under AMP, so statistics are unscaled and skipped steps recorded;
    ``tensorboard`` mirrors the run into ``log_dir/tb`` (None: when tensorboard is installed);
    ``compact`` merges the chunks into one memory-mappable array per metric at close (fast reading).
    """
    return Scope(
        model, optimizer, log_dir=log_dir, include=include, exclude=exclude, every=every,
        flush_every=flush_every, activations=activations, flow=flow, update_every=update_every,
        overwrite=overwrite, tensorboard=tensorboard, scaler=scaler, compact=compact,
    )
