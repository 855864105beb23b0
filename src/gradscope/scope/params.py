"""The parameter side of a Scope: gradients at the end of backward, optimizer steps, clips, AMP.

A part the Scope holds (:class:`ParamRecorder`); it shares the Scope's :class:`StepState` and asks
the module side for depth when no module hooks run. Nothing here syncs: every value stays a device
tensor until the flush.

Python work per step does not grow with the number of tensors beyond building lists: the first
backward hooks every trainable parameter (to learn the order gradients arrive in); from then on a
few "sentinel" parameters spread over that order carry the hook, whose first call per backward
queues one end-of-backward callback, and that callback measures all gradients at once
(:mod:`gradscope.scope.gradstats`). A backward the sentinels miss (a branch they are not on) is
measured at the optimizer step and the hooks go back on every parameter to learn again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradscope import functional as F
from gradscope.scope import amp, distributed, hooks
from gradscope.scope.gradstats import GroupedStats
from gradscope.scope.modules import ModuleRecorder
from gradscope.scope.step import StepState

Measured = tuple[tuple[int, ...], Tensor, Tensor, Tensor]  # param indices, norm, max |g|, non-finite
SENTINELS = 8  # parameters that keep a gradient hook after the first backward


class ParamRecorder:
    """Gradient, optimizer, clip and GradScaler handlers: the param rows of every recorded step."""

    def __init__(self, named: list[tuple[str, nn.Parameter]], watched: list[int], state: StepState,
                 modules: ModuleRecorder, optimizers: list[torch.optim.Optimizer],
                 scaler: torch.amp.GradScaler | None, device: torch.device,
                 begin_activity: Callable[[], None], mark_stepped: Callable[[], None],
                 event: Callable[..., None]) -> None:
        self.params = [p for _, p in named]
        self.watched = [self.params[i] for i in watched]
        self.col_of = {i: c for c, i in enumerate(watched)}
        self.trainable = [i for i, p in enumerate(self.params) if p.requires_grad]
        self.trainable_params = [self.params[i] for i in self.trainable]
        self.state = state
        self.modules = modules
        self.optimizers = optimizers
        self.scaler = scaler
        self.device = device
        self.begin_activity, self.mark_stepped, self.event = begin_activity, mark_stepped, event
        self.pending: Measured | None = None
        self.snapshots: dict[int, list[Tensor]] = {}
        self.index_cache: dict[tuple[int, ...], Tensor] = {}
        self.opt_cols_cache: dict[tuple[int, int], list[int]] = {}
        self.cb_queued = False
        self.clip_fed = False  # set once gradscope.clip hands us its statistics
        self.records_clip = False
        self.acc_hook: Any = None
        # No module hooks at all (nothing to break a torch.compile graph): parameter depth then
        # comes from the order gradients arrive in the first backward, reversed.
        self.depth_from_grads = not modules.hooked
        self.grad_order: list[int] = []  # param indices in arrival order, while learning
        self.param_index = {id(p): i for i, p in enumerate(self.params)}
        self.sentinels: list[int] | None = None  # param indices that keep a hook; None: all (learning)
        self.grad_handles: dict[int, Any] = {}  # param index -> its hook's handle, while attached
        self._handles: list[Any] | None = None  # the Scope's step-handle list, while attached
        self.stats = GroupedStats(device)
        self._present: dict[tuple[int, ...], tuple[int, ...]] = {}  # missing -> present param indices
        self._scatter: dict[tuple[int, ...], tuple[Tensor, Tensor] | None] = {}

    # -- attach ---------------------------------------------------------------------------------
    def attach(self, handles: list[Any]) -> None:
        """Gradient hooks (one closure, shared): on every trainable parameter while learning, else
        on the sentinels. ``handles`` is the Scope's step-handle list; ``detached`` says it was emptied."""
        if self.acc_hook is None:
            self.acc_hook = hooks.accumulate_grad_hook(self.on_grad_accumulated)
        self._handles = handles
        for i in self.trainable if self.sentinels is None else self.sentinels:
            if i not in self.grad_handles:
                h = self.grad_handles[i] = self.params[i].register_post_accumulate_grad_hook(self.acc_hook)
                handles.append(h)

    def detached(self) -> None:
        self.grad_handles.clear()
        self._handles = None

    def _learned(self) -> None:
        """The first backward's arrival order is known: keep hooks on a few parameters spread over it."""
        order = list(dict.fromkeys(self.grad_order))
        if not order:
            return
        n = len(order)
        picks = {0, 1, n - 2, n - 1} | {n * k // (SENTINELS - 3) for k in range(1, SENTINELS - 3)}
        self.sentinels = sorted({order[k] for k in picks if 0 <= k < n})
        for i in [i for i in self.grad_handles if i not in self.sentinels]:
            self.grad_handles.pop(i).remove()

    def _relearn(self) -> None:
        """A backward the sentinels missed: hook every parameter again for the next backward."""
        self.sentinels = None
        self.grad_order = []
        if self._handles is not None:
            self.attach(self._handles)

    def attach_optimizers(self, handles: list[Any]) -> None:
        for opt in self.optimizers:
            handles.append(opt.register_step_pre_hook(hooks.optimizer_hook(self.on_optimizer_pre_step)))
            handles.append(opt.register_step_post_hook(hooks.optimizer_hook(self.on_optimizer_step)))
        if self.scaler is not None:
            handles.append(amp.ScalerPatch(self.scaler, self.on_scaler_update))
        from gradscope.clip import add_listener

        handles.append(add_listener(self.on_clip, wants_full=self.clip_wants_full))

    def close(self) -> None:
        self.acc_hook = None
        self.optimizers = []
        self.params, self.watched = [], []
        self.pending, self.snapshots, self.index_cache = None, {}, {}

    # -- backward -------------------------------------------------------------------------------
    def on_grad_accumulated(self, param: Tensor) -> None:
        state = self.state
        if state.closed:
            return
        learning = self.sentinels is None
        if learning:
            self.grad_order.append(self.param_index[id(param)])
        if self.cb_queued:
            return
        self.begin_activity()
        if not learning and (not state.scheduled() or self.clip_fed):
            return
        self.cb_queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._queue_measure)

    def _queue_measure(self) -> None:
        # Queued again from a final callback, so it runs after every callback queued during the
        # backward, DDP's gradient all-reduce finalisation included.
        torch.autograd.Variable._execution_engine.queue_callback(self.on_backward_end)

    def on_backward_end(self) -> None:
        """Measure the (accumulated, pre-clip) gradients once per backward pass."""
        self.cb_queued = False
        if self.state.closed:
            return
        if self.depth_from_grads and self.modules.next_depth == 0:
            self._depth_from_grad_order()
        if self.sentinels is None:
            self._learned()
        if self.state.scheduled() and not self.clip_fed:
            self.pending = self.measure(unscale=True)

    def _depth_from_grad_order(self) -> None:
        """Depth without forward hooks: modules ordered by their gradients' arrival, reversed."""
        mods = self.modules
        col_module = {c: mi for mi, (_, info) in enumerate(mods.modules) for c in info.param_rows}
        arrived = [self.col_of[i] for i in reversed(self.grad_order) if i in self.col_of]
        for c in arrived:
            mi = col_module.get(c)
            if mi is not None and mods.modules[mi][1].depth is None:
                mods.assign_depth(mi, mods.modules[mi][1])
        mods.next_depth = max(mods.next_depth, 1)

    def measure(self, unscale: bool = False) -> Measured:
        """Per-tensor norm, max |g| and non-finite flag of every trainable gradient present now."""
        grads = [p.grad for p in self.trainable_params]
        missing = tuple(k for k, g in enumerate(grads) if g is None)
        idx = self._present.get(missing)
        if idx is None:
            if len(self._present) > 32:
                self._present.clear()
            gone = set(missing)
            idx = self._present[missing] = tuple(i for k, i in enumerate(self.trainable) if k not in gone)
        if missing:
            grads = [g for g in grads if g is not None]
        if grads and distributed.is_dtensor(grads[0]):  # type: ignore[arg-type]
            norm, maxabs, nonfinite = distributed.sharded_grad_stats(grads)  # type: ignore[arg-type]
        else:
            norm, mx = self.stats.stats(grads, ("grad", missing))  # type: ignore[arg-type]
            maxabs = mx  # type: ignore[assignment]
            nonfinite = (~torch.isfinite(maxabs)).to(torch.float32)
        norm, maxabs, nonfinite = norm.to(self.device), maxabs.to(self.device), nonfinite.to(self.device)
        inv = amp.inv_scale(self.scaler) if unscale else None
        if inv is not None:  # grads are still multiplied by the loss scale at backward time
            norm, maxabs = norm * inv.to(self.device), maxabs * inv.to(self.device)
        return idx, norm, maxabs, nonfinite

    # -- clip and AMP ---------------------------------------------------------------------------
    def clip_wants_full(self) -> bool:
        """A clip measures max |g| for us only on steps we record."""
        return not self.state.closed and self.state.scheduled()

    def on_clip(self, params: list[Tensor], result: Any) -> None:
        """A gradscope clip measured the gradients: reuse its per-tensor statistics (pre-clip)."""
        if self.state.closed or not self.state.scheduled():
            return
        stats = result.per_tensor
        index = self.param_index
        with_grad = [p for p in params if p.grad is not None]
        if len(with_grad) != stats.norm.numel() or any(id(p) not in index for p in with_grad):
            return
        self._record_clip(result)
        if stats.maxabs is None or distributed.is_dtensor(stats.norm) or result.norm_type != 2.0:
            return  # norms only, sharded partials, or not L2 (grad_norm is L2): keep measuring ourselves
        idx = tuple(index[id(p)] for p in with_grad)
        nonfinite = stats.nonfinite if stats.nonfinite is not None else (~torch.isfinite(stats.maxabs)).float()
        self.pending = (idx, stats.norm.to(self.device), stats.maxabs.to(self.device),
                        nonfinite.to(self.device, torch.float32))
        self.clip_fed = True  # from now on the clip's pass replaces ours

    def _record_clip(self, result: Any) -> None:
        self.records_clip = True  # clip_coef and clipped are gradscope's from now on (scope.log refuses them)
        slot = self.state.ensure_slot()
        coef, clipped = result.coef.detach(), result.clipped.detach()
        if distributed.is_dtensor(coef):  # every rank clips, so this collective is matched
            coef = coef.full_tensor()
        if distributed.is_dtensor(clipped):
            clipped = clipped.full_tensor()
        coef = coef.float()
        buffers = self.state.buffers
        buffers.put_scalar("clip_coef", slot, coef.min() if coef.dim() else coef)
        buffers.put_scalar("clipped", slot, clipped.float().reshape(()))

    def on_scaler_update(self, scaler: Any) -> None:
        """Once per iteration, after scaler.step: record the loss scale, and close a skipped step."""
        state = self.state
        if state.closed:
            return
        if state.scheduled():
            slot = state.ensure_slot()
            scale = getattr(scaler, "_scale", None)
            if scale is not None:
                state.buffers.put_scalar("amp_scale", slot, scale.float())
            skipped = amp.found_inf(scaler, self.optimizers)
            if skipped is not None:
                state.buffers.put_scalar("amp_skipped", slot, skipped)
        if self.optimizers and not state.stepped:
            # The scaler skipped optimizer.step() (Inf/NaN grads; it synced to decide): still a step.
            self.event("amp_skip")
            if state.scheduled():
                self.record()
            self.mark_stepped()

    def adopt_scaler(self, scaler: torch.amp.GradScaler, handles: list[Any]) -> None:
        """A GradScaler nobody passed steps our optimizer: use it from now on. The gradients measured at
        this backward's end were scaled by its current scale (it changes only in ``update()``), so
        the pending statistics are divided by it now; a clip's statistics came after unscale_."""
        self.scaler = scaler
        inv = amp.inv_scale(scaler)
        if inv is not None and self.pending is not None and not self.clip_fed:
            idx, norm, maxabs, nonfinite = self.pending
            inv = inv.to(self.device)
            self.pending = (idx, norm * inv, maxabs * inv, nonfinite)
        handles.append(amp.ScalerPatch(scaler, self.on_scaler_update))

    # -- optimizer ------------------------------------------------------------------------------
    def on_optimizer_pre_step(self, opt: torch.optim.Optimizer) -> None:
        if self.state.closed or not self.state.update_sampled():
            return
        cols = self._opt_cols(opt)
        if cols:
            self.snapshots[id(opt)] = torch._foreach_mul([self.watched[c].detach() for c in cols], 1.0)

    def on_optimizer_step(self, opt: torch.optim.Optimizer) -> None:
        state = self.state
        if state.closed:
            return
        before = self.snapshots.pop(id(opt), None)
        primary = opt is self.optimizers[0]
        if primary:
            self.begin_activity()
        if not state.scheduled():
            if primary:
                self.mark_stepped()
            return
        slot = state.ensure_slot()
        if before is not None:
            cols = self._opt_cols(opt)
            after = [self.watched[c].detach() for c in cols]
            weight = self._norms(after, ("w", id(opt), len(cols)))
            torch._foreach_sub_(before, after)  # the snapshot becomes -(update): no second weight copy
            delta = self._norms(before, ("w", id(opt), len(cols)))
            idx = self._device_index(cols)
            state.buffers.put("param", "weight_norm", slot, weight, cols=idx)
            state.buffers.put("param", "update_ratio", slot, delta / weight, cols=idx)
        if primary:
            self.record()
            for g, group in enumerate(opt.param_groups):
                state.buffers.put_scalar("lr" if g == 0 else f"lr_group{g}", slot, group["lr"])
            self.mark_stepped()

    def _opt_cols(self, opt: torch.optim.Optimizer) -> list[int]:
        """Watched trainable columns this optimizer updates (cached; rebuilt if its groups change)."""
        key = (id(opt), sum(len(g["params"]) for g in opt.param_groups))
        cols = self.opt_cols_cache.get(key)
        if cols is None:
            ids = {id(p) for group in opt.param_groups for p in group["params"]}
            cols = [c for c, p in enumerate(self.watched) if id(p) in ids and p.requires_grad]
            self.opt_cols_cache[key] = cols
        return cols

    def _device_index(self, cols: Sequence[int]) -> Tensor:
        """``cols`` as a device index tensor, cached: built (one host-to-device copy) once per pattern."""
        key = tuple(cols)
        hit = self.index_cache.get(key)
        if hit is None:
            hit = self.index_cache[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return hit

    def record(self) -> None:
        """Write the step's gradient statistics (measured at backward end) and weight norms."""
        state = self.state
        slot = state.ensure_slot()
        pending, self.pending = self.pending, None
        if pending is None:
            pending = self.measure(unscale=self.scaler is not None and not self.clip_fed)
            if pending[0] and self.sentinels is not None and not self.clip_fed:
                self._relearn()  # gradients no sentinel saw arrive (or none this step): learn again
        idx, norm, maxabs, nonfinite = pending
        buffers = state.buffers
        buffers.put_scalar("grad_norm", slot, F.total_norm(norm))
        scatter = self._scatter_index(idx)
        if scatter is not None:
            src_t, dst_t = scatter
            for name, values in (("grad_norm", norm), ("grad_max", maxabs), ("grad_nonfinite", nonfinite)):
                buffers.put("param", name, slot, values.index_select(0, src_t), cols=dst_t)
        if state.update_sampled():
            # Weights the optimizers update get their norm with the update ratio; the rest here.
            owned = {c for opt in self.optimizers for c in self._opt_cols(opt)}
            cols = [c for c in range(len(self.watched)) if c not in owned]
            if cols:
                weight = self._norms([self.watched[c].detach() for c in cols], ("w-rest", len(cols)))
                buffers.put("param", "weight_norm", slot, weight, cols=self._device_index(cols))

    def _scatter_index(self, idx: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
        """Device indices taking measured positions to watched columns, cached per pattern."""
        if idx in self._scatter:
            return self._scatter[idx]
        if len(self._scatter) > 32:
            self._scatter.clear()
        src = [k for k, i in enumerate(idx) if i in self.col_of]
        hit = (self._device_index(src), self._device_index([self.col_of[idx[k]] for k in src])) if src else None
        self._scatter[idx] = hit
        return hit

    def _norms(self, tensors: list[Tensor], key: Any) -> Tensor:
        """Per-tensor L2 norms on the device (sharded ones reduced over their mesh)."""
        if tensors and distributed.is_dtensor(tensors[0]):
            return distributed.norms(tensors).to(self.device)
        return self.stats.stats(tensors, key, maxabs=False)[0].to(self.device)
