"""PNG figures of a run: gradient-flow heatmap, norm profile by depth, activation health, global norm.

matplotlib is imported inside each function (``pip install matplotlib``); figures are built on the
object API (no pyplot state), so this works headless and from threads. Long runs are reduced to at
most MAX_COLUMNS step columns (median per block) before drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.report import draw
from gradscope.report.draw import MAX_COLUMNS, figure, quiet
from gradscope.run.groups import group_median, group_rows
from gradscope.run.reader import Run

if TYPE_CHECKING:
    from gradscope.diagnose.findings import Finding

__all__ = ["MAX_COLUMNS", "write_plots"]


def _figure(w: float, h: float) -> Any:
    return figure(w, h)


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.text import Text

    from gradscope.run.format import printable

    for text in fig.findobj(Text):  # a non-UTF-8 run or row name would stop the font renderer
        text.set_text(printable(text.get_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _reduce(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_COLUMNS rows: the median of each block of steps (first step of the block)."""
    return draw.reduce_steps(steps, values)


def _heat(run: Run) -> draw.Heat:
    return draw.param_heat(run.rows, run.steps, run.metric("param", "grad_norm"), group_rows(run.rows))


def gradient_flow_heatmap(run: Run, path: Path, heat: draw.Heat | None = None) -> Path:
    """Parameters by depth (rows) x steps (columns), colour = gradient L2 norm on a log scale; past
    draw.HEAT_ROWS parameters, one row per block or depth bucket (the group's norm)."""
    heat = heat or _heat(run)
    fig = _figure(10, max(3.0, min(12.0, 1.4 + 0.2 * min(heat.rows, draw.LABEL_ROWS))))
    what = "group gradient norm" if heat.grouped else "per-parameter gradient norm"
    draw.draw_heatmap(fig, fig.add_subplot(), heat, f"Gradient flow: {what} by depth ({run.path.name})")
    return _save(fig, path)


def norm_profile(run: Run, path: Path, at: list[int] | None = None, heat: draw.Heat | None = None) -> Path:
    """Gradient norm of each parameter (or group) by depth at a few steps (median around each)."""
    heat = heat or _heat(run)
    fig = _figure(10, 5.2)
    draw.draw_profile(fig.add_subplot(), heat, f"Gradient norm profile by depth ({run.path.name})", at)
    return _save(fig, path)


ACT_METRICS = (("zero_frac", "exactly zero"), ("sat_frac", "saturated (bounded)"),
               ("dead_frac", "dead units (ReLU family)"))


def activation_health(run: Run, path: Path) -> Path:
    """Median zero, saturation and dead-unit fractions of each module output (or block) by depth."""
    return _save(activation_health_figure(run), path)


def activation_health_figure(run: Run) -> Any:
    """The activation-health figure: bars per module output, or a line per block past LABEL_ROWS."""
    rows = run.rows_of("act")
    grouping = group_rows(run.rows)
    kept = [(g.label, cols) for g, cols in zip(grouping.groups, grouping.of("act"), strict=True) if cols]
    per_group = [cols for _, cols in kept]
    many = len(rows) > draw.LABEL_ROWS
    order = [c for cols in per_group for c in cols]
    fig = _figure(10, 5.2)
    ax = fig.add_subplot()
    ax.set_title(f"Activation health by depth ({run.path.name})")
    ax.set_ylabel("fraction of outputs / units (median over steps)")
    if not rows:
        ax.text(0.5, 0.5, "no module outputs recorded", ha="center", va="center", transform=ax.transAxes)
        return fig
    meds = {}
    for metric, _ in ACT_METRICS:
        a = run.metric("act", metric).astype(np.float64)
        with quiet():
            meds[metric] = np.nanmedian(a, axis=0) if a.shape[0] else np.full(len(rows), np.nan)
    if many:  # one point per block / depth bucket: the median over its module outputs
        labels = [label for label, _ in kept]
        x = np.arange(len(per_group))
        for metric, label in ACT_METRICS:
            y = group_median(meds[metric][None, :], per_group)[0]
            ax.plot(x, y, marker="o", ms=3, label=label)
        ax.set_xlabel("block / depth group (forward order; median over its module outputs)")
    else:
        labels = [f"{rows[c].name} ({rows[c].module_type})" for c in order]
        x = np.arange(len(order))
        width = 0.27
        for k, (metric, label) in enumerate(ACT_METRICS):
            ax.bar(x + (k - 1) * width, np.nan_to_num(meds[metric][order]), width, label=label)
        ax.set_xlabel("module output (forward order)")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="dead/saturated warning level")
    ax.set_xticks(x)
    ax.set_xticklabels([draw.short_label(s, 40) for s in labels], rotation=90,
                       fontsize=7 if len(labels) <= 24 else 6)
    recorded = [m for m in meds.values() if np.isfinite(m).any()]
    if not recorded:
        _note(ax, "no activation statistics recorded (activations=False?)")
    elif all(np.nan_to_num(m).max() == 0 for m in recorded):
        _note(ax, "all zero: no output is exactly 0, saturated or a dead unit (healthy by these measures)")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.55, text, ha="center", va="center", transform=ax.transAxes, fontsize=10,
            bbox={"boxstyle": "round", "fc": "lightyellow", "ec": "grey"})


def global_norm(run: Run, findings: list[Finding], path: Path) -> Path:
    """Global gradient norm (pre-clip) over steps with spikes, clipped and non-finite steps marked;
    below it the logged loss (when there is one) with its spikes."""
    return _save(global_norm_figure(run, findings), path)


def global_norm_figure(run: Run, findings: list[Finding]) -> Any:
    loss = run.scalars.get("loss")
    has_loss = loss is not None and np.isfinite(loss).any()
    fig = _figure(10, 6.5 if has_loss else 4.5)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2]) if has_loss else [fig.add_subplot()]
    draw_global_norm(axes[0], run, findings)
    if has_loss:
        axes[0].set_xlabel("")
        draw_loss(axes[1], run, findings)
    return fig


def _spike_steps(findings: list[Finding], kind: str) -> list[int]:
    return [int(f.evidence["step"]) for f in findings if f.kind == kind and "step" in f.evidence]


def draw_global_norm(ax: Any, run: Run, findings: list[Finding]) -> None:
    ax.set_title(f"Global gradient norm, pre-clip ({run.path.name})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("global gradient L2 norm (log)")
    g = run.scalars.get("grad_norm")
    if g is None or not np.isfinite(g).any():
        ax.text(0.5, 0.5, "no global norm recorded", ha="center", va="center", transform=ax.transAxes)
        return
    g = g.astype(np.float64)
    s, y = _reduce(run.steps, g[:, None])
    ax.plot(s, np.where(y[:, 0] > 0, y[:, 0], np.nan), lw=1, label="global norm" +
            (" (block median)" if len(s) < run.num_steps else ""))
    if (g[np.isfinite(g)] > 0).any():
        ax.set_yscale("log")
    top = np.nanmax(np.where(np.isfinite(g) & (g > 0), g, np.nan)) if (g > 0).any() else 1.0
    clip = run.scalars.get("clip_coef")
    if clip is not None:
        with np.errstate(invalid="ignore"):
            m = clip < 1
        if m.any():
            ax.scatter(run.steps[m], np.where(np.isfinite(g[m]), g[m], top), s=8, c="orange", label="clipped")
    spikes = _spike_steps(findings, "gradient_spike")
    if spikes:
        idx = np.searchsorted(run.steps, spikes)
        ax.scatter(spikes, g[np.clip(idx, 0, len(g) - 1)], s=60, facecolors="none", edgecolors="red",
                   label="spike")
    from gradscope.diagnose._util import amp_skipped

    skipped = amp_skipped(run)
    if skipped.any():
        ax.scatter(run.steps[skipped], np.full(int(skipped.sum()), top), marker="|", c="grey", s=40,
                   label="AMP step skipped (overflow)")
    bad = (~np.isfinite(g) | _nonfinite_steps(run)) & ~skipped
    if bad.any():
        ax.scatter(run.steps[bad], np.full(int(bad.sum()), top), marker="x", c="black", s=18,
                   label="non-finite step")
    ax.legend(fontsize=8)


def draw_loss(ax: Any, run: Run, findings: list[Finding]) -> None:
    """The logged loss (log axis when positive) with loss spikes and gradient spikes marked."""
    loss = run.scalars["loss"].astype(np.float64)
    s, y = _reduce(run.steps, loss[:, None])
    ax.plot(s, y[:, 0], lw=1, color="tab:green", label="loss" + (" (block median)" if len(s) < len(loss) else ""))
    fin = loss[np.isfinite(loss)]
    if fin.size and (fin > 0).all() and fin.max() > 20 * fin.min():
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.set_xlabel("optimizer step")
    for kind, colour, label in (("loss_spike", "red", "loss spike"),
                                ("gradient_spike", "purple", "gradient spike")):
        at = _spike_steps(findings, kind)
        if at:
            idx = np.clip(np.searchsorted(run.steps, at), 0, len(loss) - 1)
            ax.scatter(at, loss[idx], s=60, facecolors="none", edgecolors=colour, label=label)
    ax.legend(fontsize=8)


def _nonfinite_steps(run: Run) -> np.ndarray:
    bad = np.zeros(run.num_steps, bool)
    for kind, metric in (("param", "grad_nonfinite"), ("act", "nonfinite"), ("flow", "nonfinite")):
        a = run.metric(kind, metric)
        if a.shape[1]:
            bad |= (np.nan_to_num(a, nan=0.0) > 0).any(axis=1)
    return bad


def write_plots(run: Run, findings: list[Finding], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """All four figures as PNGs in ``out_dir``; returns their paths. A run without per-layer rows
    (a TensorBoard log of another tool) gets the global-norm figure only."""
    out = Path(out_dir)
    if not run.rows and run.scalars:
        return [global_norm(run, findings, out / f"{prefix}global_norm.png")]
    heat = _heat(run)
    return [
        gradient_flow_heatmap(run, out / f"{prefix}gradient_flow.png", heat=heat),
        norm_profile(run, out / f"{prefix}norm_profile.png", heat=heat),
        activation_health(run, out / f"{prefix}activation_health.png"),
        global_norm(run, findings, out / f"{prefix}global_norm.png"),
    ]
