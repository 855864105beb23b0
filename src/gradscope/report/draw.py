"""Drawing on arrays (no Run): the gradient-flow heatmap and the norm-by-depth profile, shared by the
PNG plots, the HTML report and the TensorBoard image. matplotlib is imported by the caller's figure.

Rows are labelled one by one up to LABEL_ROWS; past that the axis is labelled by group (block or
depth bucket) with a tick at each group's first row, so 5,000 rows draw in about the time of 50.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradscope.diagnose._util import nanmedian  # no warnings: also runs on the writer thread
from gradscope.run.format import Row
from gradscope.run.groups import Grouping, group_norm, group_rows, short_label

MAX_COLUMNS = 800  # step columns drawn at most (median per block of steps beyond)
HEAT_ROWS = 96  # per-parameter heatmap rows at most; more rows are drawn as group norms
LABEL_ROWS = 48  # rows labelled one by one at most
DPI = 110


def figure(w: float, h: float, feature: str = "gradscope analyze --plots") -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot state: headless, thread-safe)."""
    from gradscope import _optional

    _optional.require("matplotlib", feature)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def quiet() -> warnings.catch_warnings:
    """A with block silencing numpy's all-NaN RuntimeWarnings."""

    class _Quiet(warnings.catch_warnings):
        def __enter__(self) -> Any:
            out = super().__enter__()
            warnings.simplefilter("ignore", RuntimeWarning)
            return out

    return _Quiet()


def reduce_steps(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_COLUMNS rows of ``values``: the median of each block of steps (first step kept)."""
    t = steps.shape[0]
    if t <= MAX_COLUMNS:
        return steps, values
    block = -(-t // MAX_COLUMNS)
    nb = -(-t // block)
    pad = nb * block - t
    v = values.astype(np.float64)
    if pad:
        v = np.concatenate([v, np.full((pad, *v.shape[1:]), np.nan)])
    return steps[::block], nanmedian(v.reshape(nb, block, *v.shape[1:]), axis=1)


@dataclass
class Heat:
    """What a heatmap or profile draws: [T x R] values, one label per row, group ticks when grouped."""

    steps: np.ndarray
    values: np.ndarray
    labels: list[str]
    ticks: list[tuple[int, str]]  # (first row, group label): where groups start
    grouped: bool  # rows are group norms, not single parameters

    @property
    def rows(self) -> int:
        return len(self.labels)


def param_heat(rows: Sequence[Row], steps: np.ndarray, grad_norm: np.ndarray,
               grouping: Grouping | None = None) -> Heat:
    """Per-parameter gradient norms by depth (rows never given a gradient left out); past HEAT_ROWS
    parameters, the L2 norm of each group's gradients instead."""
    params = [r for r in rows if r.kind == "param"]
    grouping = grouping or group_rows(list(rows))
    used = np.isfinite(grad_norm).any(axis=0) if grad_norm.shape[0] else np.zeros(grad_norm.shape[1], bool)
    per_group = [[c for c in cols if used[c]] for cols in grouping.of("param")]
    n = sum(len(c) for c in per_group)
    if n <= HEAT_ROWS:
        order = [c for cols in per_group for c in cols]
        ticks, at = [], 0
        for g, cols in enumerate(per_group):
            if cols:
                ticks.append((at, grouping.groups[g].label))
                at += len(cols)
        labels = [params[c].name for c in order]
        return Heat(steps, grad_norm[:, order].astype(np.float64), labels, ticks, False)
    keep = [g for g, cols in enumerate(per_group) if cols]
    values = group_norm(grad_norm, [per_group[g] for g in keep])
    labels = [f"{grouping.groups[g].label} ({len(per_group[g])})" for g in keep]
    return Heat(steps, values, labels, [(i, labels[i]) for i in range(len(keep))], True)


def _row_axis(ax: Any, heat: Heat, axis: str) -> None:
    """Label the row axis: every row when few, else one tick per group (at most ~LABEL_ROWS)."""
    set_ticks = ax.set_yticks if axis == "y" else ax.set_xticks
    set_labels = ax.set_yticklabels if axis == "y" else ax.set_xticklabels
    rot = {} if axis == "y" else {"rotation": 90}
    if heat.rows <= LABEL_ROWS:
        set_ticks(range(heat.rows))
        set_labels([short_label(s, 48) for s in heat.labels], fontsize=7 if heat.rows <= 24 else 6, **rot)
        return
    ticks = heat.ticks
    if len(ticks) > LABEL_ROWS:
        ticks = ticks[:: -(-len(ticks) // LABEL_ROWS)]
    set_ticks([t for t, _ in ticks])
    set_labels([short_label(s, 40) for _, s in ticks], fontsize=6, **rot)
    line = ax.axhline if axis == "y" else ax.axvline
    if not heat.grouped:
        for t, _ in ticks[1:]:
            line(t - 0.5, color="white" if axis == "y" else "grey", lw=0.5, alpha=0.6)


def draw_heatmap(fig: Any, ax: Any, heat: Heat, title: str) -> None:
    """Rows (first layer at top) x steps, colour = gradient L2 norm on a log scale; NaN left blank."""
    from matplotlib.colors import LogNorm

    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("parameter group (forward order)" if heat.grouped else "parameter (forward order)")
    steps, data = reduce_steps(heat.steps, heat.values)
    pos = data[np.isfinite(data) & (data > 0)]
    if not (pos.size and len(steps)):
        ax.text(0.5, 0.5, "no gradients recorded", ha="center", va="center", transform=ax.transAxes)
        return
    img = np.ma.masked_invalid(np.where(data > 0, data, np.nan).T)
    x1 = steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)
    lo, hi = float(pos.min()), float(pos.max())
    mesh = ax.pcolormesh(np.append(steps, x1), np.arange(heat.rows + 1) - 0.5, img, shading="flat",
                         norm=LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10), cmap="viridis",
                         rasterized=True)
    fig.colorbar(mesh, ax=ax, label="gradient L2 norm (log)" + (" of the group" if heat.grouped else ""))
    ax.set_ylim(heat.rows - 0.5, -0.5)
    _row_axis(ax, heat, "y")
    zero = np.isfinite(data) & (data == 0)
    if zero.any():
        ax.text(0.99, 0.01, "blank cells: gradient exactly 0 or not recorded", ha="right", va="bottom",
                fontsize=7, transform=ax.transAxes, color="grey")


def pick_steps(n: int, at: Sequence[int] | None = None, steps: np.ndarray | None = None) -> list[int]:
    """Indices of a few steps to profile: the given steps (nearest recorded), else 0/25/50/75/100 %."""
    if at and steps is not None and steps.size:
        return [int(np.argmin(np.abs(steps - s))) for s in at]
    return sorted({int(round(q * (n - 1))) for q in (0.0, 0.25, 0.5, 0.75, 1.0)}) if n else []


def draw_profile(ax: Any, heat: Heat, title: str, at: Sequence[int] | None = None) -> None:
    """Gradient norm by depth at a few steps (median over a window around each), log y axis."""
    ax.set_title(title)
    ax.set_xlabel("parameter group (forward order)" if heat.grouped else "parameter (forward order)")
    ax.set_ylabel("gradient L2 norm (log)")
    t = heat.steps.shape[0]
    half = max(1, t // 100)
    drawn = False
    many = heat.rows > LABEL_ROWS
    for i in pick_steps(t, at, heat.steps):
        win = heat.values[max(0, i - half): i + half + 1]
        y = nanmedian(win, axis=0) if win.size else np.array([])
        y = np.where(y > 0, y, np.nan)
        if np.isfinite(y).any():
            ax.plot(range(heat.rows), y, marker="" if many else "o", ms=3, lw=0.8 if many else 1.2,
                    label=f"step {int(heat.steps[i])}")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no non-zero gradients recorded", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_yscale("log")
    ax.legend(title="median near", fontsize=7, title_fontsize=7)
    ax.set_xlim(-0.5, heat.rows - 0.5)
    _row_axis(ax, heat, "x")


def flow_png(heat: Heat, title: str) -> tuple[bytes, int, int]:
    """The gradient-flow picture (heatmap over steps above the norm-by-depth profile) as PNG bytes,
    with its width and height in pixels. Fixed margins (no constrained layout: half the time), labels
    cut to their last 28 characters."""
    from dataclasses import replace

    heat = replace(heat, labels=[short_label(s, 28) for s in heat.labels],
                   ticks=[(t, short_label(s, 28)) for t, s in heat.ticks])
    fig = figure(10, 9, "the TensorBoard gradient-flow image")
    fig.set_layout_engine(None)
    fig.subplots_adjust(left=0.2, right=0.96, top=0.96, bottom=0.22, hspace=0.45)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 2])
    draw_heatmap(fig, top, heat, f"Gradient flow by depth: {title}")
    draw_profile(bottom, heat, "Gradient norm by depth")
    w, h = fig.canvas.get_width_height()
    return png_bytes(fig), int(w), int(h)
