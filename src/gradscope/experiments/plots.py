"""Figures for ``gradscope compare`` (matplotlib, imported when a figure is drawn).

grad_by_depth_<axis>.png  weight-gradient norm per layer (input → output) at the first and the last
                          step, one line per value of ``axis`` (activation, or fine-tuning regime)
loss_by_<axis>.png        training loss (10-step mean) over steps, one line per value of ``axis``
clip_coef.png             the clipper's coefficient over steps (1 = untouched), one line per strategy

Each figure takes the runs that match the baseline (the first value of every axis) except on the axis
drawn, and combines seeds: geometric mean for gradient norms, arithmetic mean for loss and coefficient.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SMOOTH = 10


def _pyplot() -> Any:
    from gradscope._optional import require

    require("matplotlib", "gradscope compare figures")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def select(results: Sequence[dict[str, Any]], baseline: dict[str, Any], axis: str) -> dict[Any, list[dict]]:
    """Results equal to ``baseline`` on every axis but ``axis``, grouped by their value of ``axis``."""
    out: dict[Any, list[dict]] = {}
    for r in results:
        cfg = r["config"]
        if all(cfg.get(k) == v for k, v in baseline.items() if k != axis):
            out.setdefault(cfg.get(axis), []).append(r)
    return out


def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _stack(members: list[dict], key: str) -> np.ndarray | None:
    curves = [_arr(m["curves"][key]) for m in members if m["curves"].get(key)]
    if not curves:
        return None
    n = min(c.size for c in curves)
    return np.stack([c[:n] for c in curves])


def _geomean(a: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.nanmean(np.log(np.where(a > 0, a, np.nan)), axis=0))


def _smooth(y: np.ndarray) -> np.ndarray:
    pad = np.concatenate([np.full(SMOOTH - 1, y[0]), y])
    return np.convolve(pad, np.ones(SMOOTH) / SMOOTH, mode="valid")


def _describe(baseline: dict[str, Any], axis: str) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in baseline.items() if k != axis and v is not None)


def grad_by_depth(results: Sequence[dict], baseline: dict[str, Any], axis: str, file: Path) -> Path | None:
    groups = select(results, baseline, axis)
    if not groups:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, (value, members) in enumerate(groups.items()):
        for ax, key in zip(axes, ("layer_grad_first", "layer_grad_last"), strict=True):
            a = _stack(members, key)
            if a is not None:
                y = _geomean(a)
                ax.plot(np.arange(1, y.size + 1), y, marker="o", ms=3, label=str(value), color=f"C{i % 10}")
    for ax, when in zip(axes, ("at initialisation (step 0)", "at the end (last step)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("weight matrix, input → output")
        ax.set_title(f"gradient norm by depth, {when}", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("‖∇W‖ (geometric mean over seeds)")
    axes[1].legend(title=axis, fontsize=8)
    fig.suptitle(_describe(baseline, axis), fontsize=9)
    return _save(fig, plt, file)


def loss_by(results: Sequence[dict], baseline: dict[str, Any], axis: str, file: Path) -> Path | None:
    groups = select(results, baseline, axis)
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (value, members) in enumerate(groups.items()):
        loss, steps = _stack(members, "loss"), _stack(members, "steps")
        if loss is not None and steps is not None:
            ax.plot(steps[0], _smooth(np.nanmean(loss, axis=0)), label=str(value), color=f"C{i % 10}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss ({SMOOTH}-step mean, mean over seeds)")
    ax.set_title(f"loss by {axis}  ({_describe(baseline, axis)})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(title=axis, fontsize=8)
    return _save(fig, plt, file)


def clip_coef(results: Sequence[dict], baseline: dict[str, Any], file: Path) -> Path | None:
    groups = select(results, baseline, "clip")  # colours as in loss_by_clip: "none" keeps its slot
    if not set(groups) - {"none"}:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (value, members) in enumerate(groups.items()):
        coef, steps = _stack(members, "clip_coef"), _stack(members, "steps")
        if value != "none" and coef is not None and steps is not None:
            ax.plot(steps[0], np.nanmean(coef, axis=0), label=str(value), lw=1, color=f"C{i % 10}")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_ylabel("clip coefficient (smallest per step; 1 = unclipped)")
    ax.set_title(f"clip coefficient over time  ({_describe(baseline, 'clip')})", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="clip", fontsize=8)
    return _save(fig, plt, file)


def _save(fig: Any, plt: Any, file: Path) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)
    return file


def write_figures(results: Sequence[dict], baseline: dict[str, Any], out: Path) -> list[Path]:
    """Every figure the grid has data for (an axis with one value gives no comparison figure)."""
    values = {a: {r["config"].get(a) for r in results} for a in baseline}
    written: list[Path | None] = []
    for axis in ("activation", "regime", "init", "depth"):
        if axis in baseline and (len(values[axis]) > 1 or axis in ("activation", "regime")):
            written.append(grad_by_depth(results, baseline, axis, out / f"grad_by_depth_{axis}.png"))
            break
    for axis in ("clip", "regime"):
        if axis in baseline and len(values[axis]) > 1:
            written.append(loss_by(results, baseline, axis, out / f"loss_by_{axis}.png"))
    if "clip" in baseline and len(values["clip"] - {"none"}) >= 1:
        written.append(clip_coef(results, baseline, out / "clip_coef.png"))
    return [p for p in written if p is not None]
