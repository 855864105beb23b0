"""update_ratio: ||dw|| / ||w|| per optimizer step far from its usual range for long stretches.

Rule of thumb from Karpathy's CS231n notes ("Neural Networks Part 3", ratio of updates to weights):
about 1e-3 is healthy; much higher and training is unstable, much lower and the weights barely move
(the learning rate is too low). Only dense weights (>= 2-D) are checked: biases and norm gains start
near zero, where any step is a large ratio. Embeddings are left out too: a step updates only the
rows of the tokens in the batch, so their ratio says nothing about the step size. update_ratio
is sampled (every ``update_every`` steps).
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose._util import SPARSE_TYPES, clipping, nanmedian, sampled_steps, stretch, used_param_cols
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "update_ratio"
# Two orders of magnitude above the ~1e-3 rule of thumb: each step rewrites a tenth of the weight.
HIGH = 1e-1
# Two orders below: at 1e-5 a weight needs ~1e5 steps to change by its own size.
LOW = 1e-5
# Out of range on at least half of the sampled steps ...
PERSIST = 0.5
# ... and at least this many samples (update_ratio is sampled, e.g. every 10th step).
MIN_SAMPLES = 3
# Above 1 the update is larger than the weight itself.
ERROR_HIGH = 1.0
DEFAULTS: dict[str, float] = {"high": HIGH, "low": LOW, "persist": PERSIST, "min_samples": MIN_SAMPLES,
                              "error_high": ERROR_HIGH}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    ur = run.metric("param", "update_ratio")
    rows = run.rows_of("param")
    cols = [c for c in used_param_cols(run) if len(rows[c].shape) >= 2
            and rows[c].module_type not in SPARSE_TYPES]
    sampled = sampled_steps(run)
    sub = ur[sampled][:, cols]  # only the sampled steps hold values
    valid = np.isfinite(sub)
    n = valid.sum(axis=0)
    med = nanmedian(np.where(valid, sub, np.nan), axis=0)
    findings = []
    for side in ("high", "low"):
        with np.errstate(invalid="ignore"):
            hit = valid & ((sub > cfg["high"]) if side == "high" else (sub < cfg["low"]))
        ok = (n >= cfg["min_samples"]) & (hit.sum(axis=0) >= cfg["persist"] * np.maximum(n, 1))
        layers = [rows[cols[k]].name for k in np.flatnonzero(ok)]
        meds = [float(med[k]) for k in np.flatnonzero(ok)]
        hits = np.zeros(run.num_steps, bool)
        if ok.any():
            hits[sampled] = hit[:, ok].any(axis=1)
        if layers:
            findings.append(_finding(run, side, layers, meds, hits, cfg))
    return findings


def _finding(run: Run, side: str, layers: list[str], meds: list[float], hits: np.ndarray,
             cfg: dict[str, float]) -> Finding:
    worst = max(meds) if side == "high" else min(meds)
    ev = {"side": side, "median_ratio_worst": worst, "layers": len(layers), "threshold": cfg[side],
          "sampled_steps_out_of_range": int(hits.sum())}
    lr = run.scalars.get("lr")
    if lr is not None and np.isfinite(lr).any():
        ev["lr_median"] = float(np.median(lr[np.isfinite(lr)]))
    shown = ", ".join(layers[:5]) + (f" and {len(layers) - 5} more" if len(layers) > 5 else "")
    if side == "high":
        sev = Severity.ERROR if worst >= cfg["error_high"] else Severity.WARNING
        msg = (f"Updates are large: ||dw||/||w|| has median up to {worst:.2g} (above {cfg['high']:g}) "
               f"on most sampled steps for {shown}; each step rewrites a large part of the weights.")
        clip = clipping(run)
        remedy = ("Lower the learning rate (aim for ||dw||/||w|| around 1e-3), add warm-up, "
                  + ("" if clip else "clip gradients, ")
                  + "and check weight decay and init scale (tiny weights make any step large)."
                  + (f" Clipping alone does not bound the step: {clip}." if clip else ""))
    else:
        sev = Severity.WARNING
        msg = (f"Updates are tiny: ||dw||/||w|| has median down to {worst:.2g} (below {cfg['low']:g}) on "
               f"most sampled steps for {shown}; those weights barely move.")
        remedy = ("Raise the learning rate for these parameters (or use per-group learning rates / an "
                  "adaptive optimizer such as Adam); check that the LR schedule has not decayed to ~0 and "
                  "that gradients are not vanishing before these layers.")
    return Finding("update_ratio", sev, layers, stretch(run.steps, hits), ev, msg, remedy)
