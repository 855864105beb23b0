"""Per-run metrics for the comparison table, computed from a recorded run and its findings.

grad_ratio      median over steps of ‖∇W_first‖ / ‖∇W_last‖, the first and last trainable weight
                matrices in depth order (≪ 1: vanishing towards the input, ≫ 1: exploding)
steps_to_target first step at which the training loss, averaged over the trailing ``SMOOTH`` steps,
                is at or below the task's target (None: never)
dead_frac       mean over ReLU layers of the fraction of units with no positive output on the last batch
sat_frac        mean over bounded activations (sigmoid, tanh, ...) of the fraction of outputs within
                1 % of a bound, last step
spikes          gradient-spike steps found by ``diagnose`` (robust z-score on the gradient norms)
clip_rate       fraction of steps on which the clipper changed the gradients (coefficient < 1)
findings        warnings and errors from ``diagnose`` (info excluded)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from gradscope.functional import BOUNDED_RANGES
from gradscope.run.reader import Run

SMOOTH = 10
CURVE_POINTS = 200  # curves kept in result.json are subsampled to at most this many points


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def weight_columns(run: Run) -> list[int]:
    """Param columns of trainable weight matrices that received a gradient, in depth order."""
    rows = run.rows_of("param")
    gn = run.metric("param", "grad_norm")
    return [c for c in run.depth_order("param")
            if rows[c].trainable and len(rows[c].shape) >= 2 and np.isfinite(gn[:, c]).any()]


def grad_ratio(run: Run) -> float:
    cols = weight_columns(run)
    if len(cols) < 2:
        return math.nan
    gn = run.metric("param", "grad_norm").astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = gn[:, cols[0]] / gn[:, cols[-1]]
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else math.nan


def steps_to_target(loss: np.ndarray, target: float) -> int | None:
    if loss.size == 0:
        return None
    kernel = np.ones(SMOOTH) / SMOOTH
    pad = np.concatenate([np.full(SMOOTH - 1, loss[0]), loss])
    smooth = np.convolve(pad, kernel, mode="valid")
    hit = np.flatnonzero(smooth <= target)
    return int(hit[0]) + 1 if hit.size else None


def _last_mean(values: np.ndarray, cols: list[int]) -> float:
    if not cols or values.shape[0] == 0:
        return math.nan
    sub = values[:, cols]
    seen = np.flatnonzero(np.isfinite(sub).any(axis=1))
    if not seen.size:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(sub[seen[-1]]))


def activation_fractions(run: Run) -> tuple[float, float]:
    """(dead-unit fraction over ReLU layers, saturation fraction over bounded layers), last step."""
    rows = run.rows_of("act")
    if not rows:
        return math.nan, math.nan
    dead_cols = [i for i, r in enumerate(rows) if r.module_type in ("ReLU", "ReLU6", "Threshold")]
    sat_cols = [i for i, r in enumerate(rows) if r.module_type in BOUNDED_RANGES]
    return (_last_mean(run.metric("act", "dead_frac"), dead_cols),
            _last_mean(run.metric("act", "sat_frac"), sat_cols))


def _subsample(x: np.ndarray) -> list[float | None]:
    if x.size > CURVE_POINTS:
        x = x[np.linspace(0, x.size - 1, CURVE_POINTS).round().astype(int)]
    return [_nan_to_none(float(v)) for v in x]


def curves(run: Run) -> dict[str, Any]:
    """Small curves for the figures: loss and clip coefficient over steps, layer grad norms by depth."""
    cols = weight_columns(run)
    gn = run.metric("param", "grad_norm")
    rows = run.rows_of("param")
    out: dict[str, Any] = {"steps": _subsample(run.steps.astype(np.float64))}
    for name in ("loss", "clip_coef"):
        if name in run.scalars:
            out[name] = _subsample(run.scalars[name].astype(np.float64))
    if gn.shape[0]:
        out["layers"] = [rows[c].name for c in cols]
        out["layer_grad_first"] = [_nan_to_none(float(gn[0, c])) for c in cols]
        out["layer_grad_last"] = [_nan_to_none(float(gn[-1, c])) for c in cols]
    return out


def summarize(run: Run, findings: list, target_loss: float) -> dict[str, Any]:
    """The table metrics of one run (JSON-ready: NaN becomes None)."""
    loss = run.scalars.get("loss", np.zeros(0, np.float32)).astype(np.float64)
    clipped = run.scalars.get("clipped")
    dead, sat = activation_fractions(run)
    spikes = [f.evidence.get("spike_steps_total", 1) for f in findings if f.kind == "gradient_spike"]
    serious = [f for f in findings if f.severity.rank >= 1]
    clip_rate = math.nan
    if clipped is not None and np.isfinite(clipped).any():
        clip_rate = float(np.nanmean(clipped))
    return {
        "steps_recorded": run.num_steps,
        "last_batch_loss": _nan_to_none(float(loss[-1])) if loss.size else None,
        "steps_to_target": steps_to_target(loss, target_loss),
        "grad_ratio": _nan_to_none(grad_ratio(run)),
        "dead_frac": _nan_to_none(dead),
        "sat_frac": _nan_to_none(sat),
        "spikes": int(max(spikes, default=0)),
        "clip_rate": _nan_to_none(clip_rate),
        "findings": len(serious),
        "finding_kinds": sorted({f.kind for f in serious}),
    }
