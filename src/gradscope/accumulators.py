"""Per-step sums of activation and backward-flow statistics, gathered per module call.

A hook does the least it can: two to four reductions of the tensor, kept as 0-d device tensors in a
list. At the end of the step the lists are stacked and added per row in a few vectorised ops, so
the per-call cost does not grow with the number of statistics (and no call syncs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradscope import functional as F


def _f32(y: Tensor) -> Tensor:
    y = y.detach()
    return y if y.dtype in (torch.float32, torch.float64) else y.float()  # half norms overflow


class StepSums:
    """Activation and flow partials of one step; ``reduce`` turns them into per-row sums."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = F._stat_dtype(device)
        self._reset()

    def _reset(self) -> None:
        self.act_rows: list[int] = []
        self.act_count: list[int] = []
        self.act_sum: list[Tensor] = []
        self.act_sumsq: list[Tensor] = []
        self.act_extra: list[tuple[int, int, Tensor]] = []  # (call index, field, value)
        self.dead: dict[int, Tensor] = {}
        self.flow_rows: list[int] = []
        self.flow_sumsq: list[Tensor] = []

    def add_activation(self, row: int, y: Tensor, module_type: str) -> None:
        """One module output: sum and sum of squares always; zeros and dead units (ReLU-like), saturation."""
        yf = _f32(y)
        call = len(self.act_rows)
        self.act_rows.append(row)
        self.act_count.append(yf.numel())
        self.act_sum.append(yf.sum())
        self.act_sumsq.append(F.sumsq(yf))
        if module_type in F.DEAD_UNIT_TYPES:
            # Summed |sign(y)| counts non-zeros, 5-20x faster than count_nonzero on the CPU; for
            # outputs that cannot be negative the abs is not needed (one pass fewer).
            signs = torch.sign(yf) if module_type in F.NONNEGATIVE_TYPES else torch.sign(yf).abs_()
            self.act_extra.append((call, 3, yf.numel() - signs.sum()))
            alive = F.unit_active(yf)
            prev = self.dead.get(row)
            self.dead[row] = alive if prev is None or prev.shape != alive.shape else prev | alive
        bounded = F.BOUNDED_RANGES.get(module_type)
        if bounded is not None:
            centre, half = bounded
            self.act_extra.append((call, 5, ((yf - centre).abs() > half * F.SATURATION_MARGIN).sum()))

    def add_flow(self, row: int, grad: Tensor) -> None:
        """The gradient arriving at a module output: its sum of squares (non-finite with NaN/Inf)."""
        self.flow_rows.append(row)
        self.flow_sumsq.append(F.sumsq(_f32(grad)))

    def reduce(self, rows: int) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
        """Per-row [rows x ACT_N] activation sums, [rows x 3] flow sums (calls, sumsq, non-finite
        calls), and the per-row dead-unit masks; then start a new step."""
        dt, dev = self.dtype, self.device
        act = torch.zeros(rows, F.ACT_N, dtype=dt, device=dev)
        if self.act_rows:
            n = len(self.act_rows)
            s = torch.stack(self.act_sum).to(dt)
            cols = torch.zeros(n, F.ACT_N, dtype=dt, device=dev)
            cols[:, 0] = torch.tensor(self.act_count, dtype=dt, device=dev)
            cols[:, 1] = s
            cols[:, 2] = torch.stack(self.act_sumsq).to(dt)
            cols[:, 4] = (~torch.isfinite(s)).to(dt)
            if self.act_extra:
                calls = torch.tensor([c for c, _, _ in self.act_extra], device=dev)
                fields = torch.tensor([f for _, f, _ in self.act_extra], device=dev)
                cols.index_put_((calls, fields), torch.stack([v.to(dt) for _, _, v in self.act_extra]))
            act.index_add_(0, torch.tensor(self.act_rows, device=dev), cols)
        flow = torch.zeros(rows, 3, dtype=dt, device=dev)
        if self.flow_rows:
            sq = torch.stack(self.flow_sumsq).to(dt)
            part = torch.stack([torch.ones_like(sq), sq, (~torch.isfinite(sq)).to(dt)], 1)
            flow.index_add_(0, torch.tensor(self.flow_rows, device=dev), part)
        dead = self.dead
        self._reset()
        return act, flow, dead
