"""loss_plateau: the loss does not move while the gradients are finite: stuck at its start value,
or at chance level (ln(num_classes) for cross-entropy over the head's outputs).

Flagged when the median of the last tenth of the logged losses is not lower than the median of
the first tenth by ``improvement``, and the loss neither fell by 30 % in between (a fall and rise
is divergence) nor blew up; or when it stays within ``chance_tol`` of ln(C) (C the head's outputs)
over the second half of the run without ever getting below it (a loss passing through ln(C) on its
way down is learning). The message points at the causes the other evidence supports: tiny
updates (learning rate too low or decayed to 0), a mostly frozen model, vanishing gradients.
Cheap: medians of one scalar.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradscope.diagnose._util import SPARSE_TYPES, loss_trend, nanmedian, used_param_cols
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "plateau"
# Less than 2 % lower at the end than at the start. A model that learns anything at all drops its
# loss by far more within a few dozen steps (a classifier from ln C towards 0); noise alone moves the
# median of a tenth of the steps by about 1 %.
IMPROVEMENT = 0.02
# Within 2 % of ln(C) is "at chance level".
CHANCE_TOL = 0.02
# A loss away from chance level is judged on at least 50 logged values (its tenths are then medians of
# 5 or more); at chance level, 20 are enough (loss_trend's minimum).
MIN_LOSSES = 50
DEFAULTS: dict[str, float] = {"improvement": IMPROVEMENT, "chance_tol": CHANCE_TOL, "min_losses": MIN_LOSSES}


def stuck(run: Run, cfg: dict[str, float]) -> bool:
    """Whether the loss of ``run`` stayed where it started, or ended at chance level without ever
    getting below it (see the module docstring)."""
    t = loss_trend(run)
    if t is None:
        return False
    c = head_classes(run)
    if c is not None:
        chance = math.log(c)
        tol = cfg["chance_tol"] * chance
        if abs(t.end - chance) <= tol and t.best >= chance - tol and t.late_high <= chance + tol:
            return True  # at chance over the whole second half, never below it
    # Not lower by the bar (a loss that moved up by noise is not improving either), and neither a
    # fall and rise (divergence, for the explosion and learning-rate checks) nor a blow-up. Away from
    # chance level, a noisy loss needs a longer run before "not improving" is more than noise.
    return (t.n >= cfg["min_losses"] and t.improvement < cfg["improvement"] and t.best_improvement < 0.3
            and t.end <= 1.5 * t.start)


def ends_near_chance(run: Run, margin: float) -> bool:
    """Whether a classifier's loss ends within ``margin`` (a fraction) of chance level (ln C) and never
    got clearly below it: it learned little beyond the class prior (a head calibrating its bias)."""
    t = loss_trend(run)
    c = head_classes(run)
    if t is None or c is None:
        return False
    chance = math.log(c)
    return t.end >= (1 - margin) * chance and t.best >= (1 - 1.5 * margin) * chance


def head_classes(run: Run) -> int | None:
    """Output width of the deepest dense weight (the classifier head), when >= 2."""
    rows = run.rows_of("param")
    cols = [c for c in run.depth_order("param") if len(rows[c].shape) == 2 and rows[c].depth is not None
            and rows[c].module_type not in SPARSE_TYPES]
    if not cols:
        return None
    n = rows[cols[-1]].shape[0]
    return n if n >= 2 else None


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    t = loss_trend(run)
    if t is None or not stuck(run, cfg):
        return []
    g = run.scalars.get("grad_norm")
    if g is not None and np.isinf(g).any():
        return []  # non-finite gradients: the nonfinite finding says what happened
    ev: dict[str, Any] = {"loss_start": t.start, "loss_end": t.end, "loss_best": t.best,
                          "improvement": t.improvement, "losses_logged": t.n}
    causes = _likely_causes(run, ev)
    c = head_classes(run)
    at_chance = c is not None and abs(t.end - math.log(c)) <= cfg["chance_tol"] * math.log(c)
    if at_chance:
        ev["chance_level"] = math.log(c)
        ev["classes"] = c
    rose = t.end > t.start
    where = (f"stays at chance level (ln {c} = {math.log(c):.3f} for the {c} outputs of the head)" if at_chance
             else f"ends higher than it started ({t.start:.4g} -> {t.end:.4g}, {t.end / t.start - 1:+.1%})"
             if rose and t.start > 0 else f"stays at its start value ({t.start:.4g} -> {t.end:.4g}, "
             f"{-t.improvement:+.1%})")
    msg = (f"The loss does not improve: it {where} over {t.n} logged steps while the gradients "
           "are finite." + (" Likely: " + "; ".join(causes) + "." if causes else ""))
    remedy = ("Check, in this order: that the optimizer holds the model's parameters and the learning "
              "rate is not ~0 (print optimizer.param_groups); that the backbone is not frozen by "
              "mistake; that the labels match the inputs (a shuffled-label bug gives exactly chance "
              "level); then raise the learning rate (or add warm-up) and look for vanishing gradients.")
    return [Finding("loss_plateau", Severity.WARNING, [], (t.first_step, t.last_step), ev, msg, remedy)]


def _likely_causes(run: Run, ev: dict[str, Any]) -> list[str]:
    out = []
    lr = run.scalars.get("lr")
    if lr is not None and np.isfinite(lr).any():
        ev["lr_median"] = float(np.nanmedian(lr))
        if np.nanmax(lr) <= 0:
            out.append("the learning rate is 0")
    rows = run.rows_of("param")
    n_all = sum(int(np.prod(r.shape)) for r in rows)
    frozen = sum(int(np.prod(r.shape)) for r in rows if not r.trainable)
    if n_all:
        ev["frozen_fraction"] = frozen / n_all
        if frozen / n_all >= 0.5:
            out.append(f"{frozen / n_all:.0%} of the parameters are frozen")
    cols = [c for c in used_param_cols(run) if len(rows[c].shape) >= 2]
    if cols:
        ur = run.metric("param", "update_ratio")[:, cols]
        ok = np.isfinite(ur)
        if ok.any():
            med = float(np.nanmedian(nanmedian(np.where(ok, ur, np.nan), axis=0)))
            ev["update_ratio_median"] = med
            if med < 1e-5:
                out.append(f"the updates are tiny (||dw||/||w|| ~{med:.1g}): the learning rate is too low")
    return out
