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

from gradscope import amp, distributed, hooks
from gradscope import functional as F
from gradscope.accumulators import StepSums
from gradscope.buffers import StepBuffers
from gradscope.rows import plan
from gradscope.run import format as fmt
from gradscope.run.format import Row
from gradscope.run.writer import NullWriter, RunWriter
from gradscope.setup import check_args, make_atexit, make_sinks, prepare_dir


class Scope:
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
        self._stepped = True

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
        if self.activations or self.flow:
            for mi, (module, _) in enumerate(self._modules):
                self._handles.append(module.register_forward_hook(hooks.forward_hook(self, mi)))
        else:
            # No module hooks at all (nothing to break a torch.compile graph): parameter depth then
            # comes from the order gradients arrive in the first backward, reversed.
            self._grad_order: list[int] = []
            self._param_index = {id(p): i for i, p in enumerate(self._params)}
        acc_hook = hooks.accumulate_grad_hook(self)
        for i in self._trainable:
            self._handles.append(self._params[i].register_post_accumulate_grad_hook(acc_hook))
        for opt in self._optimizers:
            self._handles.append(opt.register_step_pre_hook(hooks.optimizer_pre_hook(self)))
            self._handles.append(opt.register_step_post_hook(hooks.optimizer_post_hook(self)))
        if self._scaler is not None:
            self._handles.append(amp.ScalerPatch(self._scaler, self._on_scaler_update))
        from gradscope.clip import add_listener

        self._handles.append(add_listener(self._on_clip, wants_full=self._clip_wants_full))

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
        act, flow, dead = self._sums.reduce(len(self._act_rows))
        if self._act_rows and self.activations:
            stats = F.activation_stats(act)
            for name in ("mean", "std", "zero_frac", "sat_frac", "nonfinite"):
                self._buffers.put("act", name, slot, stats[name].float())
            if dead:
                rows = list(dead)
                frac = torch.stack([1 - dead[r].float().mean() for r in rows])
                self._buffers.put("act", "dead_frac", slot, frac, cols=self._device_index(rows))
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
            y.register_hook(hooks.flow_hook(self, r))

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

    def _on_grad_accumulated(self, param: Tensor) -> None:
        if self._closed:
            return
        if not (self.activations or self.flow) and self._next_depth == 0:
            self._grad_order.append(self._param_index[id(param)])
        if self._cb_queued:
            return
        self._begin_activity()
        if not self._scheduled() or self._clip_fed:
            return
        self._cb_queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._queue_measure)

    def _queue_measure(self) -> None:
        # Queued again from a final callback, so it runs after every callback queued during the
        # backward, DDP's gradient all-reduce finalisation included.
        torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_backward_end(self) -> None:
        """Measure the (accumulated, pre-clip) gradients once per backward pass."""
        self._cb_queued = False
        if self._closed:
            return
        if not (self.activations or self.flow) and self._next_depth == 0:
            self._depth_from_grad_order()
        self._pending = self._measure_grads(unscale=True)

    def _depth_from_grad_order(self) -> None:
        """Depth without forward hooks: modules ordered by their gradients' arrival, reversed."""
        col_module = {c: mi for mi, (_, info) in enumerate(self._modules) for c in info.param_rows}
        arrived = [self._col_of[i] for i in reversed(self._grad_order) if i in self._col_of]
        for c in arrived:
            mi = col_module.get(c)
            if mi is not None and self._modules[mi][1].depth is None:
                self._assign_depth(mi, self._modules[mi][1])
        self._next_depth = max(self._next_depth, 1)

    def _measure_grads(self, unscale: bool = False) -> tuple[tuple[int, ...], Tensor, Tensor, Tensor]:
        idx = tuple(i for i in self._trainable if self._params[i].grad is not None)
        grads = [self._params[i].grad for i in idx]
        if grads and distributed.is_dtensor(grads[0]):  # type: ignore[arg-type]
            norm, maxabs, nonfinite = distributed.sharded_grad_stats(grads)  # type: ignore[arg-type]
        else:
            norm, maxabs, nonfinite = F.grad_stats(grads, exact_nonfinite=False)  # type: ignore[arg-type]
        norm, maxabs, nonfinite = norm.to(self._device), maxabs.to(self._device), nonfinite.to(self._device)
        inv = amp.inv_scale(self._scaler) if unscale else None
        if inv is not None:  # grads are still multiplied by the loss scale at backward time
            norm, maxabs = norm * inv.to(self._device), maxabs * inv.to(self._device)
        return idx, norm, maxabs, nonfinite

    def _clip_wants_full(self) -> bool:
        """A clip measures max |g| for us only on steps we record."""
        return not self._closed and self._scheduled()

    def _on_clip(self, params: list[Tensor], result: Any) -> None:
        """A gradscope clip measured the gradients: reuse its per-tensor statistics (pre-clip)."""
        if self._closed or not self._scheduled() or getattr(result, "norm_type", 2.0) != 2.0:
            return
        stats = result.per_tensor
        index = {id(p): i for i, p in enumerate(self._params)}
        with_grad = [p for p in params if p.grad is not None]
        if len(with_grad) != stats.norm.numel() or any(id(p) not in index for p in with_grad):
            return
        self._record_clip(result)
        if stats.maxabs is None or distributed.is_dtensor(stats.norm):
            return  # norms only, or sharded partials: keep measuring ourselves
        idx = tuple(index[id(p)] for p in with_grad)
        nonfinite = stats.nonfinite if stats.nonfinite is not None else (~torch.isfinite(stats.maxabs)).float()
        self._pending = (idx, stats.norm.to(self._device), stats.maxabs.to(self._device),
                         nonfinite.to(self._device, torch.float32))
        self._clip_fed = True  # from now on the clip's pass replaces ours

    def _record_clip(self, result: Any) -> None:
        slot = self._ensure_slot()
        coef, clipped = result.coef.detach(), result.clipped.detach()
        if distributed.is_dtensor(coef):  # every rank clips, so this collective is matched
            coef = coef.full_tensor()
        if distributed.is_dtensor(clipped):
            clipped = clipped.full_tensor()
        coef = coef.float()
        self._buffers.put_scalar("clip_coef", slot, coef.min() if coef.dim() else coef)
        self._buffers.put_scalar("clipped", slot, clipped.float().reshape(()))

    def _on_scaler_update(self, scaler: Any) -> None:
        """Once per iteration, after scaler.step: record the loss scale, and close a skipped step."""
        if self._closed:
            return
        if self._scheduled():
            slot = self._ensure_slot()
            scale = getattr(scaler, "_scale", None)
            if scale is not None:
                self._buffers.put_scalar("amp_scale", slot, scale.float())
            skipped = amp.found_inf(scaler, self._optimizers)
            if skipped is not None:
                self._buffers.put_scalar("amp_skipped", slot, skipped)
        if self._optimizers and not self._stepped:
            # The scaler skipped optimizer.step() (Inf/NaN grads; it synced to decide): still a step.
            self.event("amp_skip")
            if self._scheduled():
                self._record_params()
            self._stepped = True

    def _on_optimizer_pre_step(self, opt: torch.optim.Optimizer) -> None:
        if self._closed or not self._update_sampled():
            return
        cols = self._opt_cols(opt)
        if cols:
            self._snapshots[id(opt)] = torch._foreach_mul([self._watched[c].detach() for c in cols], 1.0)

    def _on_optimizer_step(self, opt: torch.optim.Optimizer) -> None:
        if self._closed:
            return
        before = self._snapshots.pop(id(opt), None)
        primary = opt is self._optimizers[0]
        if primary:
            self._begin_activity()
        if not self._scheduled():
            self._stepped = self._stepped or primary
            return
        slot = self._ensure_slot()
        if before is not None:
            cols = self._opt_cols(opt)
            after = [self._watched[c].detach() for c in cols]
            weight = distributed.norms(after).to(self._device)
            delta = distributed.norms(torch._foreach_sub(after, before)).to(self._device)
            idx = self._device_index(cols)
            self._buffers.put("param", "weight_norm", slot, weight, cols=idx)
            self._buffers.put("param", "update_ratio", slot, delta / weight, cols=idx)
        if primary:
            self._record_params()
            for g, group in enumerate(opt.param_groups):
                self._buffers.put_scalar("lr" if g == 0 else f"lr_group{g}", slot, group["lr"])
            self._stepped = True

    def _opt_cols(self, opt: torch.optim.Optimizer) -> list[int]:
        """Watched trainable columns this optimizer updates (cached; rebuilt if its groups change)."""
        key = (id(opt), sum(len(g["params"]) for g in opt.param_groups))
        cols = self._opt_cols_cache.get(key)
        if cols is None:
            ids = {id(p) for group in opt.param_groups for p in group["params"]}
            cols = [c for c, p in enumerate(self._watched) if id(p) in ids and p.requires_grad]
            self._opt_cols_cache[key] = cols
        return cols

    def _device_index(self, cols: Sequence[int]) -> Tensor:
        """``cols`` as a device index tensor, cached: built (one host-to-device copy) once per pattern."""
        key = tuple(cols)
        hit = self._index_cache.get(key)
        if hit is None:
            hit = self._index_cache[key] = torch.tensor(key, dtype=torch.long, device=self._device)
        return hit

    def _record_params(self) -> None:
        """Write the step's gradient statistics (measured at backward end) and weight norms."""
        slot = self._ensure_slot()
        pending, self._pending = self._pending, None
        idx, norm, maxabs, nonfinite = pending if pending is not None else self._measure_grads(
            unscale=self._scaler is not None and not self._clip_fed)
        self._buffers.put_scalar("grad_norm", slot, F.total_norm(norm))
        src = [k for k, i in enumerate(idx) if i in self._col_of]
        if src:
            src_t = self._device_index(src)
            dst_t = self._device_index([self._col_of[idx[k]] for k in src])
            for name, values in (("grad_norm", norm), ("grad_max", maxabs), ("grad_nonfinite", nonfinite)):
                self._buffers.put("param", name, slot, values.index_select(0, src_t), cols=dst_t)
        if self._update_sampled():
            # Weights the optimizers update get their norm with the update ratio; the rest here.
            owned = {c for opt in self._optimizers for c in self._opt_cols(opt)}
            cols = [c for c in range(len(self._watched)) if c not in owned]
            if cols:
                weight = distributed.norms([self._watched[c].detach() for c in cols]).to(self._device)
                self._buffers.put("param", "weight_norm", slot, weight, cols=self._device_index(cols))


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
