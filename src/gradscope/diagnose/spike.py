"""gradient_spike: a step whose gradient norm is an outlier against the steps before it.

Robust z-score on log-norm: z = (log g_t - median) / (1.4826 * MAD) over a trailing window, the
outlier rule of ZClip (Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training")
with the median/MAD in place of its EMA mean/std so that earlier spikes do not widen the band.
The trailing window is taken in blocks of ``window`` steps (the previous two blocks), which keeps the
whole test a handful of vectorised numpy calls even for 100k steps x 500 rows.

The logged loss gets the same test (``loss_factor`` instead of ``factor``): a loss spike at a step
that also has a gradient spike is evidence on that gradient_spike finding; one without becomes a
``loss_spike`` finding. An episode during which the loss runs ``learning_drop`` below its level
before it (and does not spike), reached by a norm that had been growing for a few steps, is info:
gradients grow when a model starts to learn a new feature.
Steps the AMP GradScaler skipped are left out (their norms are overflows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose._util import (
    amp_skipped,
    clipping,
    global_norm,
    log10_safe,
    nanmedian,
    stretch,
    weight_profile,
)
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "spike"
# Block size in steps; the reference is the two blocks before the tested one (50 steps), close to the
# horizon of ZClip's EMA (alpha = 0.97 -> ~33 steps) and AutoClip's percentile history.
WINDOW = 25
# Robust z at or above 6: far in the tail even for heavy-tailed gradient noise (ZClip uses 2.5 on an
# EMA to clip, we only report, so we ask for much stronger evidence).
Z = 6.0
# ... and at least 5x the window median, so that a calm window (tiny MAD) does not flag a 20% wiggle.
FACTOR = 5.0
# Three orders of magnitude in one step is an error, not a wobble.
ERROR_FACTOR = 1e3
# A reference needs this many recorded steps before a step is tested (early steps are not).
MIN_HISTORY = 16
# At most this many spike steps are reported one by one (the worst ones); the count says the rest.
MAX_REPORTED = 5
# A loss 3x the median of the previous steps: losses move less than gradient norms (a bad batch that
# multiplies the gradient norm by 10 typically doubles or triples the loss), so the bar is lower.
LOSS_FACTOR = 3.0
# Spike steps at most this far apart are one episode (a bad batch whose effect lasts a few steps:
# momentum and Adam's moments carry it into the next updates).
GAP = 3
# An episode during which the loss runs this far (15 %) below its level before it, without a loss spike,
# after a gradient norm that had been growing for a few steps, is a model starting to learn (its
# gradients grow with the signal it found), not a bad batch: info (see _learning).
LEARNING_DROP = 0.15
LEAD = 5
LEAD_GROWTH = 1.5
# An episode whose peak gradient norm stays at or below the norm the run started with (median of its
# first ``min_history`` steps), while the loss at its worst is at most this fraction (10 %) of the
# starting loss, is the noise of a converged model: a few hard examples dominate a mean gradient that
# has become tiny, and "13x the median" is still 10x below where training began. Info.
CONVERGED_LOSS = 0.1
DEFAULTS: dict[str, float] = {
    "window": WINDOW, "z": Z, "factor": FACTOR, "error_factor": ERROR_FACTOR,
    "min_history": MIN_HISTORY, "max_reported": MAX_REPORTED, "loss_factor": LOSS_FACTOR, "gap": GAP,
    "learning_drop": LEARNING_DROP, "converged_loss": CONVERGED_LOSS,
}
_LN10 = np.log(10.0)


def robust_z(x: np.ndarray, window: int, min_history: int) -> tuple[np.ndarray, np.ndarray]:
    """(z, log10 factor over the median) per element of ``x`` [T x R] (log10 values, NaN = missing).

    The reference of block b is blocks b-2 and b-1; block 0 has none (NaN).
    """
    t, r = x.shape
    w = max(2, int(window))
    nb = -(-t // w)
    pad = nb * w - t
    xp = np.concatenate([x, np.full((pad, r), np.nan)]) if pad else x
    blocks = xp.reshape(nb, w, r).astype(np.float32)
    nan_block = np.full((1, w, r), np.nan, np.float32)
    prev1 = np.concatenate([nan_block, blocks[:-1]])
    prev2 = np.concatenate([nan_block, prev1[:-1]])
    ref = np.concatenate([prev2, prev1], axis=1)  # [nb, 2w, r]
    med = nanmedian(ref, axis=1)  # [nb, r]
    mad = nanmedian(np.abs(ref - med[:, None, :]), axis=1)
    count = np.sum(~np.isnan(ref), axis=1)
    med = np.where(count >= min_history, med, np.nan)
    sigma = np.maximum(1.4826 * mad, 1e-3)  # floor: log10(1.0023), i.e. a quarter percent
    dev = blocks - med[:, None, :]
    z = dev / sigma[:, None, :]
    return z.reshape(nb * w, r)[:t], dev.reshape(nb * w, r)[:t]


def _spikes(x: np.ndarray, cfg: dict[str, float],
            factor: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        z, dev = robust_z(x, int(cfg["window"]), int(cfg["min_history"]))
        hit = (z >= cfg["z"]) & (dev >= np.log10(cfg["factor"] if factor is None else factor))
    return hit, z, dev


def _loss_spikes(run: Run, cfg: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss spike mask, z and log10 factor per step (all False when no positive loss is logged)."""
    t = run.num_steps
    loss = run.scalars.get("loss")
    none = np.zeros(t, bool), np.full(t, np.nan), np.full(t, np.nan)
    if loss is None:
        return none
    loss = np.where(amp_skipped(run), np.nan, loss.astype(np.float64))
    finite = loss[np.isfinite(loss)]
    if finite.size == 0 or np.mean(finite > 0) < 0.9:  # a loss that can be <= 0 has no log scale
        return none
    hit, z, dev = _spikes(log10_safe(loss)[:, None], cfg, cfg["loss_factor"])
    return hit[:, 0], z[:, 0], dev[:, 0]


def episodes(mask: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[first, last] index of each run of True in ``mask``; runs at most ``gap`` steps apart merge."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) > gap)
    starts = np.concatenate([[idx[0]], idx[cut + 1]])
    ends = np.concatenate([idx[cut], [idx[-1]]])
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def _worst(eps: list[tuple[int, int]], score: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """(first, last, peak index) of the ``n`` episodes with the highest peak score, in step order."""
    peaks = [(a, b, a + int(np.argmax(score[a:b + 1]))) for a, b in eps]
    return sorted(sorted(peaks, key=lambda e: -score[e[2]])[:n])


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    t = run.num_steps
    if t < cfg["min_history"] + 1:
        return []
    g = global_norm(run)
    glob = log10_safe(g)[:, None] if g is not None else np.full((t, 1), np.nan)
    ghit, gz, gdev = _spikes(glob, cfg)
    prof = weight_profile(run)
    lhit, lz, ldev = _spikes(log10_safe(prof.values), cfg) if prof.names else (
        np.zeros((t, 0), bool), np.zeros((t, 0)), np.zeros((t, 0)))
    # The global norm is what the optimizer feels: when it is recorded, a step spikes when it does.
    # Layers spiking alone (a layer whose gradient grows as it starts to learn, a batch that hits one
    # layer) leave the update as a whole in its usual range: one info finding.
    has_global = bool(np.isfinite(glob).any())
    step_hit = ghit[:, 0] if has_global else lhit.any(axis=1)
    gap = int(cfg["gap"])
    eps = episodes(step_hit, gap)
    near = np.zeros(t, bool)
    for a, b in eps:
        near[max(0, a - gap):b + gap + 1] = True
    loss_hit, loss_z, loss_dev = _loss_spikes(run, cfg)
    findings = _loss_findings(run, loss_hit & ~near, loss_z, loss_dev, cfg)
    score = np.where(ghit[:, 0], gdev[:, 0], -np.inf)
    if lhit.shape[1]:
        score = np.maximum(score, np.where(lhit, ldev, -np.inf).max(axis=1))
    for a, b, i in _worst(eps, score, int(cfg["max_reported"])):
        f = _finding(run, i, ghit, gz, gdev, prof.names, lhit, lz, ldev, len(eps), cfg)
        f.steps = (int(run.steps[a]), int(run.steps[b]))
        f.evidence["episode_steps"] = int(step_hit[a:b + 1].sum())
        if b > a:
            f.message = (f.message[:-1] + f"; one episode of {f.evidence['episode_steps']} spiking steps "
                         f"({int(run.steps[a])}-{int(run.steps[b])}).")
        if np.isfinite(loss_dev[i]):  # how the loss moved at that step, spike or not
            f.evidence["loss_factor_over_median"] = float(10.0 ** loss_dev[i])
        lo, hi = max(0, a - gap), b + gap + 1
        drop = _learning(run, a, b, int(cfg["window"]), cfg["learning_drop"])
        if drop > 0 and not loss_hit[lo:hi].any() and f.severity == Severity.WARNING:
            f.severity = Severity.INFO  # gradients growing while the loss falls: learning, not a bad batch
            f.evidence["loss_drop"] = drop
            f.message = (f.message[:-1] + f"; meanwhile the loss fell {drop:.0%} below its level before: "
                         "a model that starts to learn a new feature has growing gradients, not a bad batch.")
            f.remedy = ("Nothing to do while the loss keeps falling. If the norm keeps growing after the loss "
                        "levels off, clip adaptively (ZClip, AutoClip) or lower the learning rate.")
        if loss_hit[lo:hi].any():
            worst = float(10.0 ** np.max(np.where(loss_hit[lo:hi], loss_dev[lo:hi], -np.inf)))
            f.message = f.message[:-1] + f"; the loss spikes with it ({worst:.1f}x its median)."
        calm = _converged(run, lo, hi, int(cfg["min_history"]), cfg["converged_loss"])
        if calm is not None and f.severity == Severity.WARNING:
            start_norm, loss_frac = calm
            f.severity = Severity.INFO  # late noise of a converged model, below where training began
            f.evidence.update(start_norm=start_norm, loss_fraction_of_start=loss_frac)
            f.message = (f.message[:-1] + f"; but the norm stays below the {start_norm:.3g} the run started "
                         f"with and the loss is at {loss_frac:.1%} of its starting level: the noise of a "
                         "converged model (a few hard examples dominate a tiny mean gradient).")
            f.remedy = ("Nothing to do while the loss stays this low. If such spikes grow past the starting "
                        "norm or the loss climbs back, lower the learning rate (or decay it) or clip "
                        "adaptively (ZClip, AutoClip).")
        findings.append(f)
    alone = lhit.any(axis=1) & ~near if has_global else np.zeros(t, bool)
    if alone.any():
        findings.append(_layer_only(run, alone, lhit, ldev, prof.names))
    return findings


def _learning(run: Run, a: int, b: int, window: int, drop_bar: float) -> float:
    """The loss drop (a fraction) when the episode [a, b] looks like a model starting to learn, else 0:
    the median loss over the episode and the ``LEAD`` steps before it lies ``drop_bar`` below the
    median of the ``2 * window`` steps before those, and the global gradient norm had already grown
    over the ``LEAD`` steps (median >= ``LEAD_GROWTH`` x its reference median): a trend that crossed the
    spike bar, not a jump out of a calm baseline, which is what a bad batch gives."""
    loss, g = run.scalars.get("loss"), global_norm(run)
    start = a - LEAD
    if loss is None or g is None or start < 5:
        return 0.0
    loss = np.where(np.isfinite(loss), loss.astype(np.float64), np.nan)
    g = np.where(np.isfinite(g), g.astype(np.float64), np.nan)
    ref = slice(max(0, start - 2 * window), start)
    before, now, g_ref, g_lead = (float(nanmedian(x)) for x in (loss[ref], loss[start:b + 1], g[ref], g[start:a]))
    if not (before > 0 and g_ref > 0 and np.isfinite(now) and np.isfinite(g_lead)):
        return 0.0
    drop = (before - now) / before
    return drop if drop >= drop_bar and g_lead >= LEAD_GROWTH * g_ref else 0.0


def _converged(run: Run, lo: int, hi: int, start: int, loss_bar: float) -> tuple[float, float] | None:
    """(starting norm, worst loss / starting loss) when steps [lo, hi) look like a converged model's
    noise (see ``CONVERGED_LOSS``), else None. Starting levels: medians of the first ``start`` steps."""
    loss, g = run.scalars.get("loss"), global_norm(run)
    if loss is None or g is None:
        return None
    loss = np.where(np.isfinite(loss), loss.astype(np.float64), np.nan)
    g = np.where(np.isfinite(g), g, np.nan)
    g0, l0 = float(nanmedian(g[:start])), float(nanmedian(loss[:start]))
    peak, worst = float(np.nanmax(g[lo:hi], initial=np.nan)), float(np.nanmax(loss[lo:hi], initial=np.nan))
    if not (g0 > 0 and l0 > 0 and np.isfinite(peak) and np.isfinite(worst) and worst >= 0):
        return None
    return (g0, worst / l0) if peak <= g0 and worst <= loss_bar * l0 else None


def _layer_only(run: Run, alone: np.ndarray, lhit: np.ndarray, ldev: np.ndarray,
                names: list[str]) -> Finding:
    """Info: layers whose own gradient norm jumped while the global norm stayed in its range."""
    sub = np.where(lhit & alone[:, None], ldev, -np.inf)
    i, c = (int(v) for v in np.unravel_index(int(np.argmax(sub)), sub.shape))
    layers = [names[k] for k in np.flatnonzero((lhit & alone[:, None]).any(axis=0))]
    factor = float(10.0 ** sub[i, c])
    ev = {"steps_with_layer_spikes": int(alone.sum()), "worst_layer": names[c],
          "worst_step": int(run.steps[i]), "worst_factor_over_median": factor}
    msg = (f"{len(layers)} layer(s) had gradient-norm excursions on {int(alone.sum())} step(s) while the "
           f"global gradient norm stayed in its usual range (worst: {names[c]} at step "
           f"{int(run.steps[i])}, {factor:.1f}x its median).")
    remedy = ("Nothing to do: the update as a whole was not disturbed. A layer's gradient often grows "
              "as it starts to learn, or jumps on a batch that happens to hit it.")
    return Finding("gradient_spike", Severity.INFO, layers, stretch(run.steps, alone), ev, msg, remedy)


def _loss_findings(run: Run, hit: np.ndarray, z: np.ndarray, dev: np.ndarray,
                   cfg: dict[str, float]) -> list[Finding]:
    """One loss_spike finding per episode of loss spikes without a gradient spike (the worst
    ``max_reported`` episodes)."""
    eps = episodes(hit, int(cfg["gap"]))
    score = np.where(hit, dev, -np.inf)
    out = []
    for a, b, i in _worst(eps, score, int(cfg["max_reported"])):
        step, factor = int(run.steps[i]), float(10.0 ** dev[i])
        ev = {"step": step, "z": float(z[i]), "factor_over_median": factor, "loss": float(
            run.scalars["loss"][i]), "spike_steps_total": int(hit.sum()), "episodes": len(eps),
            "episode_steps": int(hit[a:b + 1].sum())}
        msg = (f"Loss spike at step {step}: the loss is {factor:.1f}x the median of the previous "
               f"{2 * int(cfg['window'])} steps (robust z = {z[i]:.1f}) while the gradient norm stays "
               "in its usual range.")
        remedy = ("Look at the batch of that step (an outlier, mislabelled or corrupted batch); if loss "
                  "spikes recur, lower the learning rate or add warm-up, and check that the data is "
                  "shuffled (a run of one class gives a loss jump at each epoch boundary).")
        out.append(Finding("loss_spike", Severity.WARNING, [], (int(run.steps[a]), int(run.steps[b])), ev,
                           msg, remedy))
    return out


def _finding(run: Run, i: int, ghit: np.ndarray, gz: np.ndarray, gdev: np.ndarray, names: list[str],
             lhit: np.ndarray, lz: np.ndarray, ldev: np.ndarray, total: int,
             cfg: dict[str, float]) -> Finding:
    step = int(run.steps[i])
    layers = [names[c] for c in np.flatnonzero(lhit[i])]
    if ghit[i, 0]:
        z, dev, where = float(gz[i, 0]), float(gdev[i, 0]), "global gradient norm"
    else:
        c = int(np.argmax(np.where(lhit[i], ldev[i], -np.inf)))
        z, dev, where = float(lz[i, c]), float(ldev[i, c]), f"gradient norm of {names[c]}"
    factor = 10.0 ** dev
    ev: dict[str, Any] = {"step": step, "z": z, "factor_over_median": factor,
                          "layers_spiking": len(layers), "spike_steps_total": total}
    g = global_norm(run)
    if g is not None and np.isfinite(g[i]):
        ev["global_norm"] = float(g[i])
    sev = Severity.ERROR if factor >= cfg["error_factor"] else Severity.WARNING
    msg = (f"Gradient spike at step {step}: the {where} is {factor:.1f}x the median of the previous "
           f"{2 * int(cfg['window'])} steps (robust z = {z:.1f})"
           + (f"; {len(layers)} layer(s) spike with it." if layers else "."))
    done = clipping(run)
    remedy = ("Look at the batch of that step (an outlier or mislabelled batch, a sequence much longer "
              "than usual, a data-loader bug). "
              + (f"Since {done}, the spike did not reach the update at full size; lower the learning "
                 "rate if spikes recur." if done else
                 "To keep training stable, clip adaptively: ZClip (z-score on the gradient norm, Kumar "
                 "et al. 2025) or AutoClip (clip at a percentile of past norms, Seetharaman et al. "
                 "2020), or a fixed max_norm near the usual global norm; lower the learning rate if "
                 "spikes recur."))
    return Finding("gradient_spike", sev, layers, (step, step), ev, msg, remedy)
