"""exploding_gradient: gradients grow with depth or over time by orders of magnitude, or approach
overflow (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose._util import (
    amp_skipped,
    block_reduce,
    clipping,
    flow_profile,
    global_norm,
    log10_safe,
    stretch,
    weight_profile,
)
from gradscope.diagnose.findings import Finding, Severity
from gradscope.diagnose.vanishing import CONSISTENCY, grouped_trend
from gradscope.run.reader import Run

NAME = "exploding"
# First layer's gradient 1000x above the last one's: the mirror image of vanishing.RATIO.
DEPTH_RATIO = 1e3
# Global norm 1000x its value early in training: healthy runs move within one or two orders of
# magnitude once past the first steps (grad norm usually falls as the loss does).
TIME_GROWTH = 1e3
# fp16's largest finite value; a gradient element past it would be Inf under fp16 AMP.
OVERFLOW = 65504.0
PERSIST = 0.5
# Steps per block when tracking the global norm over time (median per block smooths batch noise).
BLOCK = 10
# A clipping threshold is only suggested from at least this many healthy steps.
MIN_HEALTHY = 5
DEFAULTS: dict[str, float] = {
    "depth_ratio": DEPTH_RATIO, "time_growth": TIME_GROWTH, "overflow": OVERFLOW,
    "persist": PERSIST, "block": BLOCK,
}


def _growth_over_time(run: Run, cfg: dict[str, float]) -> dict[str, Any] | None:
    g = global_norm(run)
    if g is None or g.shape[0] < 3:
        return None
    lg = log10_safe(g)
    # Short runs (a divergence that hits Inf after a few steps) get short blocks.
    block = max(1, min(int(cfg["block"]), int(np.isfinite(lg).sum()) // 5))
    med = block_reduce(lg[:, None], block)[:, 0]
    ok = np.flatnonzero(~np.isnan(med))
    if ok.size < 2:
        return None
    base = med[ok[0]]
    growth = med - base
    k = int(np.nanargmax(growth))
    if growth[k] < np.log10(cfg["time_growth"]):
        return None
    first = int(np.flatnonzero(growth >= np.log10(cfg["time_growth"]))[0])
    # Onset: the first step of that block whose norm is past the threshold (the block median is).
    start = first * block
    past = np.flatnonzero(lg[start:start + block] - base >= np.log10(cfg["time_growth"]))
    onset = start + (int(past[0]) if past.size else 0)
    return {"growth_over_time": 10.0 ** growth[k], "first_block": first, "block": block, "onset": onset}


def _overflow(run: Run, cfg: dict[str, float]) -> tuple[np.ndarray, float, list[str]]:
    gm = run.metric("param", "grad_max")
    rows = run.rows_of("param")
    with np.errstate(invalid="ignore"):
        big = np.isfinite(gm) & (gm >= cfg["overflow"]) & ~amp_skipped(run)[:, None]
    hit = big.any(axis=1) if gm.shape[1] else np.zeros(gm.shape[0], bool)
    with np.errstate(invalid="ignore"):
        peak = float(np.max(np.where(big, gm, 0.0))) if big.any() else 0.0
    cols = np.flatnonzero(big.any(axis=0)) if gm.shape[0] else []
    return hit, peak, [rows[c].name for c in cols]


def suggested_max_norm(run: Run, healthy_until: int) -> float | None:
    """90th percentile of the global norm over healthy steps (before trouble starts)."""
    g = global_norm(run)
    if g is None or g.shape[0] == 0:
        return None
    g = g[:healthy_until]
    g = g[np.isfinite(g)]
    return float(np.percentile(g, 90)) if g.size >= MIN_HEALTHY else None


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    ev: dict[str, Any] = {}
    hit = np.zeros(run.num_steps, bool)
    layers: list[str] = []
    parts = []
    trend_cfg = {"min_layers": 3, "persist": cfg["persist"], "consistency": CONSISTENCY}
    for label, whole in (("weight", weight_profile(run)), ("flow", flow_profile(run))):
        got = grouped_trend(whole, None, cfg["depth_ratio"], trend_cfg)
        if got is None:
            continue
        prof, d = got
        ev[f"{label}_ratio_first_last"] = d["ratio"]
        ev["growth_per_layer"] = d["decay_per_layer"]
        hit |= d["hit"]
        layers = layers or prof.names[:1]
        what = "weight-gradient RMS" if label == "weight" else "output gradient"
        parts.append(f"the first layer's {what} is {d['ratio']:.1e} times the last layer's")
    t = _growth_over_time(run, cfg)
    if t is not None:
        ev["growth_over_time"] = t["growth_over_time"]
        ev["onset_step"] = int(run.steps[t["onset"]])
        hit[t["onset"]:] |= True
        parts.append(f"the global gradient norm grew {t['growth_over_time']:.1e}x from its early value "
                     f"(past {cfg['time_growth']:.0e}x from step {ev['onset_step']})")
    over, peak, over_layers = _overflow(run, cfg)
    if over.any():
        ev["max_abs_grad"] = peak
        hit |= over
        layers = layers + [n for n in over_layers if n not in layers]
        parts.append(f"gradient elements reach {peak:.2e} (fp16 overflows at 65504)")
    if not parts:
        return []
    g = global_norm(run)
    if g is not None and np.isfinite(g).any():
        ev["max_global_norm"] = float(np.nanmax(np.where(np.isfinite(g), g, np.nan)))
    hits = np.flatnonzero(hit)
    clip = suggested_max_norm(run, int(hits[0]) if hits.size else run.num_steps)
    ev["suggested_max_norm"] = clip
    worst = max([ev.get("growth_over_time", 0.0), ev.get("flow_ratio_first_last", 0.0),
                 ev.get("weight_ratio_first_last", 0.0)])
    sev = Severity.ERROR if over.any() or worst >= cfg["depth_ratio"] ** 2 else Severity.WARNING
    msg = "Gradients explode: " + "; ".join(parts) + "."
    done = clipping(run)
    if done:
        clip_txt = (f"Clipping does not cure this: {done} and the gradients still explode. Lower the "
                    "learning rate or add warm-up")
    elif clip:
        clip_txt = (f"Clip gradients with torch.nn.utils.clip_grad_norm_(model.parameters(), "
                    f"max_norm={clip:.3g}) (the 90th percentile of the global norm before the trouble "
                    "started); lower the learning rate or add warm-up")
    else:
        clip_txt = ("The trouble starts at the first steps, so it comes from the init or the learning "
                    "rate, not from a rare batch: clipping (at a max_norm near the global norm of a "
                    "healthy run) only hides it; lower the learning rate")
    remedy = (clip_txt + "; if gradients grow with depth, shrink the init (He/Xavier scale, zero-init "
              "the last layer of residual branches) and add normalisation (BatchNorm/LayerNorm).")
    return [Finding("exploding_gradient", sev, layers, stretch(run.steps, hit), ev, msg, remedy)]
