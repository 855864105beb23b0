"""The parameter side of a Scope: gradients at the end of backward, optimizer steps, clips, AMP.

A mixin of :class:`gradscope.scope.core.Scope` (it uses the Scope's state); kept apart so each file reads
in one sitting. Nothing here syncs: every value stays a device tensor until the flush.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradscope import functional as F
from gradscope.scope import amp, distributed


class ParamRecording:
    """Gradient, optimizer, clip and GradScaler handlers of a Scope."""

    _closed: bool
    _cb_queued: bool
    _mark_stepped: Any
    _pending: tuple[tuple[int, ...], Tensor, Tensor, Tensor] | None

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
            self._mark_stepped()

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
            if primary:
                self._mark_stepped()
            return
        slot = self._ensure_slot()
        if before is not None:
            cols = self._opt_cols(opt)
            after = [self._watched[c].detach() for c in cols]
            weight = distributed.norms(after).to(self._device)
            torch._foreach_sub_(before, after)  # the snapshot becomes -(update): no second weight copy
            delta = distributed.norms(before).to(self._device)
            idx = self._device_index(cols)
            self._buffers.put("param", "weight_norm", slot, weight, cols=idx)
            self._buffers.put("param", "update_ratio", slot, delta / weight, cols=idx)
        if primary:
            self._record_params()
            for g, group in enumerate(opt.param_groups):
                self._buffers.put_scalar("lr" if g == 0 else f"lr_group{g}", slot, group["lr"])
            self._mark_stepped()

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
