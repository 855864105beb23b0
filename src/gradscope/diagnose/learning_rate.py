"""learning_rate: the step size itself is far too large, seen in the updates, not in the gradients.

||dw|| / ||w|| of a healthy run sits near 1e-3 (Karpathy, CS231n "Neural Networks Part 3"). Adam's
first updates are about lr per element whatever the gradient (m / sqrt(v) is +-1 at step 1), so
at Adam lr 3, or AdamW lr 0.1 on a pretrained BERT (weights of rms ~0.04), the first updates are
larger than the weights themselves. Flagged when, on at least half of the dense weights, the median
update ratio reaches ``early_high`` within the first ``early_samples`` sampled steps (after the
first updates the weights have grown, so the ratio falls back even as training breaks); or when the
update ratio stays above ``high`` on half of the weights while their norms grow ``growth``-fold; or
when the run diverges from its first updates: over the first ``early_samples`` sampled steps the
median weight norm grows ``growth``-fold while the loss climbs ``early_loss_rise``-fold (plain SGD at
lr 2: moderate gradients at step 0, then every update overshoots further; the per-step update ratio
never looks extreme because the weights grow as fast as the updates).
A learning rate that jumps ``jump``-fold above everything before it (a scheduler bug: a restart to
the wrong peak, a per-batch schedule fed epochs, a multiplier applied twice), followed within
``after`` steps by a broken run (non-finite values, or the loss 3x / the gradient norm 10x their
level before), is a root of its own, from that step on.
This is the root of what follows (exploding gradients, dead units, spikes, saturation, NaN).
Cheap: a median over the sampled update-ratio rows.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gradscope.diagnose._util import SPARSE_TYPES, adaptive, nanmedian, sampled_steps, used_param_cols
from gradscope.diagnose.findings import Finding, Severity
from gradscope.diagnose.link import ROOT_CLAIM
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
# A loss 10x its first value within the first sampled steps, while the weights grow GROWTH-fold: the
# run diverges from its first updates (a run that learns never climbs like that; an explosion at
# initialisation starts high and leaves the weights alone).
EARLY_LOSS_RISE = 10.0
# A step whose lr is 10x the largest lr of every step before it (after at least AFTER steps, so the
# first steps of a warm-up from 0 do not count; a warm-up never jumps 10x above its own past) ...
JUMP = 10.0
# First updates above the "large" bar (HIGH: 100x the healthy 1e-3; a pretrained model fine-tuned
# at a sane lr moves ~1e-4) on half the weights, with the loss doubling within the early sampled steps
# instead of falling: the updates overshoot (AdamW 1e-2 on a pretrained MiniLM: 0.15 and 3.7x).
OVERSHOOT_LOSS_RISE = 2.0
# ... and, within AFTER steps, the run breaks: the loss 3x or the gradient norm 10x their median over
# the AFTER steps before the jump, or a non-finite loss or norm.
AFTER = 10
DEFAULTS: dict[str, float] = {"early_high": EARLY_HIGH, "early_samples": EARLY_SAMPLES, "high": HIGH,
                              "growth": GROWTH, "share": SHARE, "early_loss_rise": EARLY_LOSS_RISE,
                              "jump": JUMP, "after": AFTER, "overshoot_loss_rise": OVERSHOOT_LOSS_RISE}


def _dense_cols(run: Run) -> list[int]:
    rows = run.rows_of("param")
    return [c for c in used_param_cols(run) if len(rows[c].shape) >= 2
            and rows[c].module_type not in SPARSE_TYPES]


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    jump = _jump(run, cfg)
    return _too_high(run, cfg) + ([jump] if jump is not None else [])


def _jump(run: Run, cfg: dict[str, float]) -> Finding | None:
    """The first lr jump ``jump``-fold above every earlier lr that the run does not survive (module doc)."""
    lr = run.scalars.get("lr")
    after = max(1, int(cfg["after"]))
    if lr is None or lr.shape[0] <= after:
        return None
    lr = np.where(np.isfinite(lr), lr.astype(np.float64), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        past = np.fmax.accumulate(np.where(np.isnan(lr), -np.inf, lr))  # max lr up to each step
    loss, g = run.scalars.get("loss"), run.scalars.get("grad_norm")
    for t in np.flatnonzero(lr[after:] >= cfg["jump"] * np.maximum(past[after - 1:-1], 0)) + after:
        before = past[t - 1]
        if not before > 0:
            continue
        broke, what = _broke(loss, g, int(t), after)
        if not broke:
            continue
        step = int(run.steps[t])
        ev = {"jump_step": step, "lr_before": float(before), "lr_after": float(lr[t]),
              "jump_factor": float(lr[t] / before), "after": what}
        msg = (f"The learning rate jumped {lr[t] / before:.3g}x at step {step} ({before:.3g} -> {lr[t]:.3g}), "
               f"far above any earlier value, and the run broke right after it ({what})." + ROOT_CLAIM)
        remedy = ("Check the learning-rate schedule around that step: a scheduler stepped per batch where it "
                  "expects epochs (or the reverse), a warm restart to the wrong peak, a multiplier applied "
                  "twice, an lr set by hand in a param group. Plot the `lr` scalar of this run.")
        return Finding("learning_rate", Severity.ERROR, [], (step, int(run.steps[-1])), ev, msg, remedy)
    return None


def _broke(loss: np.ndarray | None, g: np.ndarray | None, t: int, after: int) -> tuple[bool, str]:
    """Whether the run broke within ``after`` steps from ``t`` (see AFTER), and how."""
    for name, x, factor in (("loss", loss, 3.0), ("gradient norm", g, 10.0)):
        if x is None:
            continue
        x = x.astype(np.float64)
        window, ref = x[t:t + after], x[max(0, t - after):t]
        if (~np.isfinite(window)).any() and np.isfinite(ref).all():
            return True, f"the {name} went non-finite"
        ref_med = float(np.nanmedian(ref)) if np.isfinite(ref).any() else float("nan")
        peak = float(np.nanmax(window)) if np.isfinite(window).any() else float("nan")
        if ref_med > 0 and peak >= factor * ref_med:
            return True, f"the {name} reached {peak / ref_med:.3g}x its level before"
    return False, ""


def _too_high(run: Run, cfg: dict[str, float]) -> list[Finding]:
    cols = _dense_cols(run)
    if not cols:
        return []
    sampled = sampled_steps(run)
    if sampled.size < 1:
        return []
    ur = run.metric("param", "update_ratio")[sampled][:, cols].astype(np.float64)  # sampled rows only
    ur = np.where(np.isfinite(ur), ur, np.nan)
    early = sampled[: max(1, int(cfg["early_samples"]))]
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
    strong = sampled.size >= 2 and (early_share >= cfg["share"] or blowing)  # the update-ratio evidence
    with np.errstate(invalid="ignore"):
        overshoot_share = float(np.mean(early_med >= cfg["high"]))
    rise = _early_loss_rise(run, early)
    overshoot = overshoot_share >= cfg["share"] and rise >= cfg["overshoot_loss_rise"]
    ratios = strong or overshoot
    diverging = _diverging(run, cols, early, cfg)
    if not ratios and diverging is None:
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
    if not strong and diverging is not None:  # the clearest evidence first
        w_growth, loss_rise, until = diverging
        ev.update(early_weight_growth=w_growth if np.isfinite(w_growth) else None, early_loss_rise=loss_rise)
        grew = (f"the weight norms grew {w_growth:.3g}x (median over {len(cols)} weights)" if np.isfinite(w_growth)
                else "the weights went non-finite")
        msg = (f"The learning rate{lr_txt} is far too high: the run diverges from its first updates. By "
               f"step {until} {grew} and the loss climbed to {loss_rise:.3g}x its first value, step after "
               "step: each update overshoots further." + ROOT_CLAIM)
    elif not strong:  # overshoot
        ev["early_loss_rise"] = rise
        msg = (f"The learning rate{lr_txt} is far too high: the first updates change the weights by "
               f"{ev['early_update_ratio_max_median']:.2g} of their norm (median ||dw||/||w|| over "
               f"{len(cols)} weights; about 1e-3 is healthy, 1e-4 for a pretrained model) and the loss "
               f"rose to {rise:.3g}x its first value instead of falling: the updates overshoot." + ROOT_CLAIM)
    else:
        msg = (f"The learning rate{lr_txt} is far too high: the first updates change the weights by "
               f"{ev['early_update_ratio_max_median']:.2g} of their norm (median ||dw||/||w|| over "
               f"{len(cols)} weights; about 1e-3 is healthy)"
               + (f" and the weight norms grow {g_med:.1f}x over the run" if np.isfinite(g_med) and g_med > 1.5
                  else "") + "." + ROOT_CLAIM)
    remedy = ("Lower the learning rate 10-100x (aim for ||dw||/||w|| near 1e-3; for fine-tuning a "
              "pretrained transformer AdamW lr 1e-5 to 5e-5, for training from scratch Adam 1e-4 to "
              "1e-3), with a linear warm-up over the first few hundred steps; then rerun and check "
              "the update ratio.")
    return [Finding("learning_rate", Severity.ERROR, layers, steps, ev, msg, remedy)]


def _early_loss_rise(run: Run, early: np.ndarray) -> float:
    """The highest finite loss up to the last early sampled step over the first one (NaN without)."""
    loss = run.scalars.get("loss")
    if loss is None or early.size == 0:
        return float("nan")
    head = loss[:int(early[-1]) + 1].astype(np.float64)
    head = head[np.isfinite(head)]
    return float(head.max() / head[0]) if head.size >= 2 and head[0] > 0 else float("nan")


def _diverging(run: Run, cols: list[int], early: np.ndarray,
               cfg: dict[str, float]) -> tuple[float, float, int] | None:
    """(median weight-norm growth, loss rise, step) when the run diverges from its first updates: over
    the early sampled steps the weights grow ``growth``-fold and the loss ``early_loss_rise``-fold. When
    the weights are non-finite by the second sample (growth inf), a loss that climbed step after step
    (3 rises in a row) to ``early_loss_rise`` squared before it broke is enough."""
    loss = run.scalars.get("loss")
    if loss is None or early.size < 1:
        return None
    wn = run.metric("param", "weight_norm")[:, cols].astype(np.float64)
    first = wn[early[0]]
    later = wn[early[1:]] if early.size > 1 else wn[early[0] + 1:early[0] + 1 + 10 * int(cfg["early_samples"])]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        w_growth = float(np.nanmedian(np.nanmax(later, axis=0) / np.where(first > 0, first, np.nan))) \
            if later.size and np.isfinite(later).any() else float("inf")
    end = int(early[-1]) + 1 if early.size > 1 else min(loss.shape[0], int(early[0]) + 10 * int(cfg["early_samples"]))
    head = loss[:end].astype(np.float64)
    broke = np.flatnonzero(~np.isfinite(head))
    head = head[:broke[0]] if broke.size else head
    if head.size < 4 or not head[0] > 0:
        return None
    peak = int(np.argmax(head))
    rise = float(head[peak] / head[0])
    if np.isfinite(w_growth):
        ok = w_growth >= cfg["growth"] and rise >= cfg["early_loss_rise"]
    else:  # the weights broke before they were sampled again: the loss's own climb must show it
        climbing = peak >= 3 and bool(np.all(np.diff(head[peak - 3:peak + 1]) > 0))
        ok = climbing and rise >= cfg["early_loss_rise"] ** 2
    return (w_growth, rise, int(run.steps[min(peak, len(run.steps) - 1)])) if ok else None


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
