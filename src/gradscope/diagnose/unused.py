"""unused_parameter: a trainable parameter that never received a gradient (no grad on any step, or
exactly zero on every step): a branch the forward never takes, a head the loss ignores, a module
built but not called. It wastes memory and optimizer state, and under DDP it is an error.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "unused"
# A parameter must miss its gradient on every recorded step, and the run must have this many steps
# (one step can legitimately skip a branch).
MIN_STEPS = 2
DEFAULTS: dict[str, float] = {"min_steps": MIN_STEPS}


def unused_cols(run: Run, min_steps: int) -> tuple[list[int], list[int]]:
    """(never got a gradient, got only exact zeros) trainable param columns."""
    gn = run.metric("param", "grad_norm")
    if gn.shape[0] < max(1, min_steps):
        return [], []
    rows = run.rows_of("param")
    nan = np.isnan(gn).all(axis=0)
    if nan.all():  # no parameter got a gradient: the run recorded no backward, nothing to compare with
        return [], []
    with np.errstate(invalid="ignore"):
        zero = ~nan & np.all(np.isnan(gn) | (gn == 0), axis=0)
    none = [c for c in range(len(rows)) if rows[c].trainable and nan[c]]
    zeros = [c for c in range(len(rows)) if rows[c].trainable and zero[c]]
    return none, zeros


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    none, zeros = unused_cols(run, int(cfg["min_steps"]))
    cols = none + zeros
    if not cols:
        return []
    rows = run.rows_of("param")
    names = [rows[c].name for c in sorted(cols, key=lambda c: (rows[c].depth is None, rows[c].depth or 0, c))]
    never_ran = sum(rows[c].depth is None for c in cols)
    elems = sum(int(np.prod(rows[c].shape)) for c in cols)
    ev = {"params": len(cols), "no_grad": len(none), "zero_grad": len(zeros), "module_never_ran": never_ran,
          "elements": elems, "steps": run.num_steps}
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    msg = (f"{len(cols)} trainable parameter(s) never received a gradient in {run.num_steps} steps: "
           f"{shown}" + (f" ({never_ran} belong to modules that never ran forward)" if never_ran else "")
           + (f"; {len(zeros)} got a gradient of exactly zero on every step, so something downstream "
              "blocks it (dead ReLU units, a detach, a multiply by 0)." if zeros else "."))
    remedy = ("If the branch is meant to train, check that its output reaches the loss (a forgotten "
              "call, a detach(), an `if` that is never true). If it is not meant to train, freeze it "
              "(p.requires_grad_(False)) or leave it out of the optimizer; under DDP pass "
              "find_unused_parameters=True only if the branch is used on some steps.")
    first, last = (int(run.steps[0]), int(run.steps[-1]))
    return [Finding("unused_parameter", Severity.WARNING, names, (first, last), ev, msg, remedy)]
