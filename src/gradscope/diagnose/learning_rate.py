"""learning_rate: the step size itself is far too large, seen in the updates, not in the gradients.

||dw|| / ||w|| of a healthy run sits near 1e-3 (Karpathy, CS231n "Neural Networks Part 3"). Adam's
first updates are about lr per element whatever the gradient (m / sqrt(v) is +-1 at step 1), so
at Adam lr 3, or AdamW lr 0.1 on a pretrained BERT (weights of rms ~0.04), the first updates are
larger than the weights themselves. Flagged when, on at least half of the dense weights, the median
update ratio reaches ``early_high`` within the first ``early_samples`` sampled steps (after the
first updates the weights have grown, so the ratio falls back even as training breaks); or when the
update ratio stays above ``high`` on half of the weights while their norms grow ``growth``-fold.
This is the root of what follows (exploding gradients, dead units, spikes, saturation, NaN).
Cheap: a median over the sampled update-ratio rows.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gradscope.diagnose._util import SPARSE_TYPES, adaptive, nanmedian, sampled_steps, used_param_cols
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "learning_rate"
# Each of the first updates moves a weight by half its own norm: ~500x the healthy 1e-3.
EARLY_HIGH = 0.5
# The first three sampled steps (update_ratio is sampled every update_every steps: 0, 10, 20).
EARLY_SAMPLES = 3
# The update_ratio detector's "large" bar, held over the run ...
HIGH = 0.1
# ... while the weight norms grow threefold: the weights are blowing up, not settling.
GROWTH = 3.0
SHARE = 0.5
DEFAULTS: dict[str, float] = {"early_high": EARLY_HIGH, "early_samples": EARLY_SAMPLES, "high": HIGH,
                              "growth": GROWTH, "share": SHARE}


def _dense_cols(run: Run) -> list[int]:
    rows = run.rows_of("param")
    return [c for c in used_param_cols(run) if len(rows[c].shape) >= 2
            and rows[c].module_type not in SPARSE_TYPES]


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    cols = _dense_cols(run)
    if not cols:
        return []
    sampled = sampled_steps(run)
    if sampled.size < 2:
        return []
    ur = run.metric("param", "update_ratio")[sampled][:, cols].astype(np.float64)  # sampled rows only
    ur = np.where(np.isfinite(ur), ur, np.nan)
    early = sampled[: int(cfg["early_samples"])]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        early_med = np.nanmax(ur[: early.size], axis=0)
    all_med = nanmedian(ur, axis=0)
    growth = _growth(run, cols, sampled)
    with np.errstate(invalid="ignore"):
        early_share = float(np.mean(early_med >= cfg["early_high"]))
        high_share = float(np.mean(all_med >= cfg["high"]))
    g_med = float(np.nanmedian(growth)) if np.isfinite(growth).any() else float("nan")
    blowing = high_share >= cfg["share"] and g_med >= cfg["growth"]
    if early_share < cfg["share"] and not blowing:
        return []
    rows = run.rows_of("param")
    worst = np.argsort(-np.nan_to_num(early_med if early_share >= cfg["share"] else all_med, nan=-1))
    layers = [rows[cols[k]].name for k in worst[:5]]
    ev: dict[str, Any] = {"early_update_ratio_max_median": float(np.nanmedian(early_med)),
                          "update_ratio_median": float(np.nanmedian(all_med)),
                          "layers_high_early": float(early_share), "layers_high": float(high_share),
                          "weight_norm_growth_median": g_med, "dense_layers": len(cols),
                          "adaptive": adaptive(run)}
    lr = run.scalars.get("lr")
    if lr is not None and np.isfinite(lr).any():
        ev["lr_first"] = float(lr[np.flatnonzero(np.isfinite(lr))[0]])
        ev["lr_max"] = float(np.nanmax(lr))
    steps = (int(run.steps[early[0]]), int(run.steps[-1]))  # from the first large update on
    lr_txt = f" (lr {ev['lr_first']:.3g})" if "lr_first" in ev else ""
    msg = (f"The learning rate{lr_txt} is far too high: the first updates change the weights by "
           f"{ev['early_update_ratio_max_median']:.2g} of their norm (median ||dw||/||w|| over "
           f"{len(cols)} weights; about 1e-3 is healthy)"
           + (f" and the weight norms grow {g_med:.1f}x over the run" if np.isfinite(g_med) and g_med > 1.5
              else "") + ". Everything below follows from it.")
    remedy = ("Lower the learning rate 10-100x (aim for ||dw||/||w|| near 1e-3; for fine-tuning a "
              "pretrained transformer AdamW lr 1e-5 to 5e-5, for training from scratch Adam 1e-4 to "
              "1e-3), with a linear warm-up over the first few hundred steps; then rerun and check "
              "the update ratio.")
    return [Finding("learning_rate", Severity.ERROR, layers, steps, ev, msg, remedy)]


def _growth(run: Run, cols: list[int], sampled: np.ndarray) -> np.ndarray:
    """Per layer: last over first weight norm at the sampled steps (where it is recorded)."""
    wn = run.metric("param", "weight_norm")[sampled][:, cols].astype(np.float64)
    ok = np.isfinite(wn) & (wn > 0)
    has = ok.sum(axis=0) >= 2
    first = np.argmax(ok, axis=0)
    last = wn.shape[0] - 1 - np.argmax(ok[::-1], axis=0)
    k = np.arange(len(cols))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(has, wn[last, k] / wn[first, k], np.nan)
