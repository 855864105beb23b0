"""PNG figures of a run: gradient-flow heatmap, norm profile by depth, activation health, global norm.

matplotlib is imported inside each function (``pip install matplotlib``); figures are built on the
object API (no pyplot state), so this works headless and from threads. Long runs are reduced to at
most MAX_COLUMNS step columns (median per block) before drawing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.run.reader import Run

if TYPE_CHECKING:
    from gradscope.diagnose.findings import Finding

MAX_COLUMNS = 800
DPI = 110


def _figure(w: float, h: float) -> Any:
    from gradscope import _optional

    _optional.require("matplotlib", "gradscope analyze --plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _reduce(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_COLUMNS rows: the median of each block of steps (first step of the block)."""
    from gradscope.diagnose._util import block_reduce

    t = steps.shape[0]
    if t <= MAX_COLUMNS:
        return steps, values
    block = -(-t // MAX_COLUMNS)
    return steps[::block], block_reduce(values, block)


def _param_cols(run: Run) -> list[int]:
    gn = run.metric("param", "grad_norm")
    return [c for c in run.depth_order("param") if gn.shape[0] and np.isfinite(gn[:, c]).any()]


def gradient_flow_heatmap(run: Run, path: Path) -> Path:
    """Parameters by depth (rows) x steps (columns), colour = gradient L2 norm on a log scale."""
    from matplotlib.colors import LogNorm

    rows = run.rows_of("param")
    cols = _param_cols(run)
    fig = _figure(10, max(3.0, min(12.0, 1.2 + 0.22 * len(cols))))
    ax = fig.add_subplot()
    ax.set_title(f"Gradient flow: per-parameter gradient norm by depth ({run.path.name})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("parameter (forward order, first layer at top)")
    data = run.metric("param", "grad_norm")[:, cols].astype(np.float64)
    steps, data = _reduce(run.steps, data)
    pos = data[np.isfinite(data) & (data > 0)]
    if pos.size and len(steps):
        img = np.ma.masked_invalid(np.where(data > 0, data, np.nan).T)
        x1 = steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)
        mesh = ax.pcolormesh(np.append(steps, x1), np.arange(len(cols) + 1) - 0.5, img, shading="flat",
                             norm=LogNorm(vmin=pos.min(), vmax=pos.max()), cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="gradient L2 norm (log scale)")
        ax.set_yticks(range(len(cols)))
        ax.set_yticklabels([rows[c].name for c in cols], fontsize=7 if len(cols) < 40 else 5)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no gradients recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def _pick_steps(run: Run, at: list[int] | None) -> list[int]:
    if at:
        return [int(np.argmin(np.abs(run.steps - s))) for s in at]
    t = run.num_steps
    return sorted({int(round(q * (t - 1))) for q in (0.0, 0.25, 0.5, 0.75, 1.0)}) if t else []


def norm_profile(run: Run, path: Path, at: list[int] | None = None) -> Path:
    """Gradient norm of each parameter by depth at a few steps (median over a few steps around each)."""
    rows = run.rows_of("param")
    cols = _param_cols(run)
    gn = run.metric("param", "grad_norm")[:, cols].astype(np.float64)
    fig = _figure(9, 4.8)
    ax = fig.add_subplot()
    ax.set_title(f"Gradient norm profile by depth ({run.path.name})")
    ax.set_xlabel("parameter (forward order)")
    ax.set_ylabel("gradient L2 norm (log scale)")
    half = max(1, run.num_steps // 100)
    drawn = False
    for i in _pick_steps(run, at):
        win = gn[max(0, i - half): i + half + 1]
        with np.errstate(all="ignore"), _quiet():
            y = np.nanmedian(win, axis=0) if win.size else np.array([])
        y = np.where(y > 0, y, np.nan)
        if np.isfinite(y).any():
            ax.plot(range(len(cols)), y, marker="o", ms=3, label=f"step {int(run.steps[i])}")
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.legend(title="median near", fontsize=8)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([rows[c].name for c in cols], rotation=90, fontsize=6 if len(cols) < 60 else 4)
    else:
        ax.text(0.5, 0.5, "no gradients recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def activation_health(run: Run, path: Path) -> Path:
    """Median zero, saturation and dead-unit fractions of each module output by depth."""
    rows = run.rows_of("act")
    order = run.depth_order("act")
    fig = _figure(9, 4.8)
    ax = fig.add_subplot()
    ax.set_title(f"Activation health by depth ({run.path.name})")
    ax.set_xlabel("module output (forward order)")
    ax.set_ylabel("fraction of outputs / units (median over steps)")
    width = 0.27
    x = np.arange(len(order))
    for k, (metric, label) in enumerate((("zero_frac", "exactly zero"), ("sat_frac", "saturated (bounded)"),
                                         ("dead_frac", "dead units (ReLU family)"))):
        a = run.metric("act", metric)[:, order].astype(np.float64)
        with np.errstate(all="ignore"), _quiet():
            y = np.nanmedian(a, axis=0) if a.shape[0] else np.full(len(order), np.nan)
        ax.bar(x + (k - 1) * width, np.nan_to_num(y), width, label=label)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="dead/saturated warning level")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{rows[c].name} ({rows[c].module_type})" for c in order], rotation=90,
                       fontsize=6 if len(order) < 60 else 4)
    ax.legend(fontsize=8)
    return _save(fig, path)


def global_norm(run: Run, findings: list[Finding], path: Path) -> Path:
    """Global gradient norm (pre-clip) over steps, with spikes, clipped steps and non-finite steps."""
    fig = _figure(10, 4.5)
    ax = fig.add_subplot()
    ax.set_title(f"Global gradient norm, pre-clip ({run.path.name})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("global gradient L2 norm (log scale)")
    g = run.scalars.get("grad_norm")
    if g is None or not np.isfinite(g).any():
        ax.text(0.5, 0.5, "no global norm recorded", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, path)
    g = g.astype(np.float64)
    s, y = _reduce(run.steps, g[:, None])
    ax.plot(s, np.where(y[:, 0] > 0, y[:, 0], np.nan), lw=1, label="global norm" +
            (" (block median)" if len(s) < run.num_steps else ""))
    ax.set_yscale("log")
    top = np.nanmax(np.where(np.isfinite(g) & (g > 0), g, np.nan))
    clip = run.scalars.get("clip_coef")
    if clip is not None:
        with np.errstate(invalid="ignore"):
            m = clip < 1
        if m.any():
            ax.scatter(run.steps[m], np.where(np.isfinite(g[m]), g[m], top), s=8, c="orange", label="clipped")
    spikes = [f.evidence["step"] for f in findings if f.kind == "gradient_spike"]
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
    return _save(fig, path)


def _nonfinite_steps(run: Run) -> np.ndarray:
    bad = np.zeros(run.num_steps, bool)
    for kind, metric in (("param", "grad_nonfinite"), ("act", "nonfinite"), ("flow", "nonfinite")):
        a = run.metric(kind, metric)
        if a.shape[1]:
            bad |= (np.nan_to_num(a, nan=0.0) > 0).any(axis=1)
    return bad


def _quiet() -> Any:
    """Silence numpy's all-NaN-slice RuntimeWarnings inside a with block."""
    import warnings

    class _Quiet(warnings.catch_warnings):
        def __enter__(self) -> Any:
            out = super().__enter__()
            warnings.simplefilter("ignore", RuntimeWarning)
            return out

    return _Quiet()


def write_plots(run: Run, findings: list[Finding], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """All four figures as PNGs in ``out_dir``; returns their paths. A run without per-layer rows
    (a TensorBoard log of another tool) gets the global-norm figure only."""
    out = Path(out_dir)
    if not run.rows and run.scalars:
        return [global_norm(run, findings, out / f"{prefix}global_norm.png")]
    return [
        gradient_flow_heatmap(run, out / f"{prefix}gradient_flow.png"),
        norm_profile(run, out / f"{prefix}norm_profile.png"),
        activation_health(run, out / f"{prefix}activation_health.png"),
        global_norm(run, findings, out / f"{prefix}global_norm.png"),
    ]
