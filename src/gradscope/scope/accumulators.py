"""Per-step sums of activation and backward-flow statistics, gathered per module call.

A hook does the least it can: two to four reductions of the tensor, kept as 0-d device tensors in
lists. At the end of the step the lists are concatenated and scattered into per-row sums with one
``index_add_``; the scatter indices depend only on the step's call pattern, so they are built once
and cached on the device (building them from Python lists every step would be a host-to-device copy,
which on CUDA waits for the queued work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope import functional as F

_SUM, _SUMSQ, _ZEROS, _NONFINITE, _SAT = 1, 2, 3, 4, 5  # columns of F.ACT_SUM_FIELDS
_SCRATCH_MAX = 1 << 20  # elements: scratch buffers stay <= 4 MB each, at most 8 of them


def _f32(y: Tensor) -> Tensor:
    y = y.detach()
    return y if y.dtype in (torch.float32, torch.float64) else y.float()  # half norms overflow


@dataclass
class _Plan:
    """Device tensors for one call pattern: constant parts and flat scatter indices."""

    act_const: Tensor  # [rows, ACT_N]: element counts (col 0) and counted elements (col 3)
    act_index: Tensor  # flat indices into [rows * ACT_N] for cat(sum, sumsq, nonfinite, -nonzero, sat)
    flow_const: Tensor  # [rows, 3]: calls per row (col 0)
    flow_index: Tensor  # flat indices into [rows * 3] for cat(sumsq, nonfinite)
    dead_index: Tensor | None  # rows with dead-unit masks, in insertion order


class StepSums:
    """Activation and flow partials of one step; ``reduce`` turns them into per-row sums."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = F._stat_dtype(device)
        self._plans: dict[tuple, _Plan] = {}
        self._scratch: dict[tuple, Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        self.act_rows: list[int] = []
        self.act_count: list[int] = []
        self.act_sum: list[Tensor] = []
        self.act_sumsq: list[Tensor] = []
        self.nz_calls: list[int] = []  # calls whose non-zeros were counted (ReLU-like)
        self.nonzero: list[Tensor] = []
        self.sat_calls: list[int] = []  # calls whose saturated elements were counted (bounded)
        self.sat: list[Tensor] = []
        self.dead: dict[int, Tensor] = {}
        self.flow_rows: list[int] = []
        self.flow_sumsq: list[Tensor] = []
        # Batched partials (SmallBatch drains): rows and element counts per call, 1-d values
        self.batch_rows: list[int] = []
        self.batch_count: list[int] = []
        self.batch_sum: list[Tensor] = []
        self.batch_sumsq: list[Tensor] = []
        self.flow_batch_rows: list[int] = []
        self.flow_batch_sumsq: list[Tensor] = []

    def add_activation(self, row: int, y: Tensor, module_type: str) -> None:
        """One module output: sum and sum of squares always; zeros and dead units (ReLU-like), saturation."""
        yf = _f32(y)
        call = len(self.act_rows)
        self.act_rows.append(row)
        self.act_count.append(yf.numel())
        self.act_sumsq.append(F.sumsq(yf))
        if module_type in F.DEAD_UNIT_TYPES and yf.numel() > 0:
            self.nz_calls.append(call)
            if module_type in F.NONNEGATIVE_TYPES and yf.dim() >= 2:
                # Outputs >= 0: a unit is alive where its sum over the batch is > 0, and the total sum
                # comes from those per-unit sums; sign(y) is then 0 or 1, so it sums to the non-zeros.
                per_unit = F.unit_sums(yf)
                self.act_sum.append(per_unit.sum())
                alive = per_unit > 0
                self.nonzero.append(self._sign(yf).sum())
            else:
                self.act_sum.append(yf.sum())
                alive = F.unit_active(yf)
                self.nonzero.append(torch.sign(yf).abs_().sum())  # 5-20x faster than count_nonzero on CPU
            prev = self.dead.get(row)
            self.dead[row] = alive if prev is None or prev.shape != alive.shape else prev | alive
        else:
            self.act_sum.append(yf.sum())
        bounded = F.BOUNDED_RANGES.get(module_type)
        if bounded is not None:
            centre, half = bounded
            self.sat_calls.append(call)
            self.sat.append(((yf - centre).abs() > half * F.SATURATION_MARGIN).sum())

    def add_activation_batch(self, rows: tuple[int, ...], counts: tuple[int, ...], sums: Tensor,
                             sumsq: Tensor) -> None:
        """Sums and sums of squares of many plain outputs at once (a drained SmallBatch)."""
        self.batch_rows += rows
        self.batch_count += counts
        self.batch_sum.append(sums)
        self.batch_sumsq.append(sumsq)

    def add_flow_batch(self, rows: tuple[int, ...], sumsq: Tensor) -> None:
        """Sums of squares of many output gradients at once (a drained SmallBatch)."""
        self.flow_batch_rows += rows
        self.flow_batch_sumsq.append(sumsq)

    def _sign(self, y: Tensor) -> Tensor:
        """sign(y) into a reused buffer for small CPU tensors: allocating a fresh 0.5 MB output costs
        as much as computing it there (CUDA's caching allocator makes fresh outputs cheap)."""
        if y.device.type != "cpu" or y.numel() > _SCRATCH_MAX:
            return torch.sign(y)
        key = (tuple(y.shape), y.dtype)
        buf = self._scratch.get(key)
        if buf is None:
            if len(self._scratch) >= 8:
                self._scratch.clear()
            buf = self._scratch[key] = torch.empty_like(y, memory_format=torch.contiguous_format)
        return torch.sign(y, out=buf)

    def add_flow(self, row: int, grad: Tensor) -> None:
        """The gradient arriving at a module output: its sum of squares (non-finite with NaN/Inf)."""
        g = grad.detach() if grad.requires_grad else grad  # (only under create_graph): a detach is an op
        if g.dtype not in (torch.float32, torch.float64):
            g = g.float()
        self.flow_rows.append(row)
        self.flow_sumsq.append(F.sumsq(g))

    def reduce(self, rows: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Per-row [rows x ACT_N] activation sums, [rows x 3] flow sums (calls, sumsq, non-finite
        calls), and the dead-unit fraction of the rows that have one (index and values); then
        start a new step."""
        dt = self.dtype
        plan = self._plan(rows)
        act, flow = plan.act_const.clone(), plan.flow_const.clone()
        if self.act_rows or self.batch_rows:
            s = _join(self.act_sum, self.batch_sum, dt)
            parts = [s, _join(self.act_sumsq, self.batch_sumsq, dt), ~torch.isfinite(s)]
            if self.nonzero:
                parts.append(-torch.stack(self.nonzero))
            if self.sat:
                parts.append(torch.stack(self.sat))
            act.view(-1).index_add_(0, plan.act_index, torch.cat([p.to(dt) for p in parts]))
        if self.flow_rows or self.flow_batch_rows:
            sq = _join(self.flow_sumsq, self.flow_batch_sumsq, dt)
            flow.view(-1).index_add_(0, plan.flow_index, torch.cat([sq, (~torch.isfinite(sq)).to(dt)]))
        dead_frac = None
        if self.dead:
            masks = list(self.dead.values())
            if all(m.shape == masks[0].shape for m in masks):
                dead_frac = 1 - torch.stack(masks).float().mean(1)
            else:
                dead_frac = torch.stack([1 - m.float().mean() for m in masks])
        dead_index = plan.dead_index
        self._reset()
        return act, flow, dead_index, dead_frac

    def _plan(self, rows: int) -> _Plan:
        key = (rows, tuple(self.act_rows), tuple(self.act_count), tuple(self.batch_rows), tuple(self.batch_count),
               tuple(self.nz_calls), tuple(self.sat_calls), tuple(self.flow_rows), tuple(self.flow_batch_rows),
               tuple(self.dead))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:  # patterns that keep changing: do not grow without bound
                self._plans.clear()
            plan = self._plans[key] = self._build_plan(rows)
        return plan

    def _build_plan(self, rows: int) -> _Plan:
        n, w = F.ACT_N, 3
        act_const = torch.zeros(rows, n, dtype=torch.float64)
        calls = self.act_rows + self.batch_rows  # eager calls first, then batched: the order of reduce's values
        for r, c in zip(calls, self.act_count + self.batch_count, strict=True):
            act_const[r, 0] += c
        for call in self.nz_calls:
            act_const[self.act_rows[call], _ZEROS] += self.act_count[call]
        base = [r * n for r in calls]
        index = ([b + _SUM for b in base] + [b + _SUMSQ for b in base] + [b + _NONFINITE for b in base]
                 + [base[c] + _ZEROS for c in self.nz_calls] + [base[c] + _SAT for c in self.sat_calls])
        flow_const = torch.zeros(rows, w, dtype=torch.float64)
        flows = self.flow_rows + self.flow_batch_rows
        for r in flows:
            flow_const[r, 0] += 1
        flow_index = [r * w + 1 for r in flows] + [r * w + 2 for r in flows]
        dev, dt = self.device, self.dtype
        return _Plan(
            act_const=act_const.to(dev, dt),
            act_index=torch.tensor(index, dtype=torch.long).to(dev),
            flow_const=flow_const.to(dev, dt),
            flow_index=torch.tensor(flow_index, dtype=torch.long).to(dev),
            dead_index=torch.tensor(list(self.dead), dtype=torch.long).to(dev) if self.dead else None,
        )


def _join(scalars: list[Tensor], vectors: list[Tensor], dtype: torch.dtype) -> Tensor:
    """0-d values of eager calls, then 1-d values of batched ones, as one ``dtype`` vector."""
    parts = ([torch.stack(scalars)] if scalars else []) + vectors
    out = parts[0] if len(parts) == 1 else torch.cat([p.to(dtype) for p in parts])
    return out.to(dtype)
