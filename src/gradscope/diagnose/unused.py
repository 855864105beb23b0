"""unused_parameter: a trainable parameter that never received a gradient (no grad on any step, or
exactly zero on every step): a branch the forward never takes, a head the loss ignores, a module
built but not called. It wastes memory and optimizer state, and under DDP it is an error.

A module that ran forward right after one whose output did get a gradient, but whose own output
never got one, is a dead-end branch: its output is computed and then ignored, as a pretrained
model's pooler is when the hidden states are pooled by hand (every mean-pooling fine-tune of a BERT).
That alone is info; a gradient cut (a detach: everything before it starves) and modules that never
ran stay warnings.
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


def dead_end_cols(run: Run, cols: list[int]) -> list[int]:
    """Of the param columns ``cols`` (no gradient ever), those of modules whose output never got a
    gradient although the module that ran just before got one on most steps (see the module doc)."""
    flow_rows = run.rows_of("flow")
    if not flow_rows or not cols:
        return []
    flow = run.metric("flow", "norm")
    got = np.mean(np.isfinite(flow), axis=0) if flow.shape[0] else np.zeros(len(flow_rows))
    by_depth = sorted((r.depth, c) for c, r in enumerate(flow_rows) if r.depth is not None)
    depths = [d for d, _ in by_depth]
    flow_of = {r.name: c for c, r in enumerate(flow_rows)}
    params = run.rows_of("param")
    out = []
    for c in cols:
        row = params[c]
        own = flow_of.get(row.name.rsplit(".", 1)[0]) if "." in row.name else None
        if row.depth is None or own is None or got[own] > 0:
            continue
        k = int(np.searchsorted(depths, row.depth)) - 1  # the watched module that ran just before
        if k >= 0 and got[by_depth[k][1]] >= 0.5:
            out.append(c)
    return out


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    none, zeros = unused_cols(run, int(cfg["min_steps"]))
    dead_end = dead_end_cols(run, none)
    cols = [c for c in none if c not in dead_end] + zeros
    out = [_dead_end(run, dead_end)] if dead_end else []
    if not cols:
        return out
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
    return [Finding("unused_parameter", Severity.WARNING, names, (first, last), ev, msg, remedy)] + out


def _dead_end(run: Run, cols: list[int]) -> Finding:
    """Info: parameters of modules whose output is computed and ignored (a dead-end branch)."""
    rows = run.rows_of("param")
    names = [rows[c].name for c in sorted(cols, key=lambda c: (rows[c].depth or 0, c))]
    modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
    elems = sum(int(np.prod(rows[c].shape)) for c in cols)
    ev = {"params": len(cols), "modules": modules, "elements": elems, "steps": run.num_steps}
    shown = ", ".join(modules[:4]) + (f" and {len(modules) - 4} more" if len(modules) > 4 else "")
    msg = (f"{shown} ran forward, but {'its' if len(modules) == 1 else 'their'} output never "
           f"reached the loss: {len(cols)} trainable parameter(s) ({elems:,} values) got no gradient in "
           f"{run.num_steps} steps, while the module that ran just before got one. A branch computed and "
           "then ignored, as a pretrained model's pooler is when the hidden states are pooled by hand.")
    remedy = ("If the loss should use this output (an auxiliary head whose loss term was forgotten), add "
              "it. Otherwise freeze these parameters (p.requires_grad_(False)) or leave them out of the "
              "optimizer; under DDP they need find_unused_parameters=True.")
    first, last = (int(run.steps[0]), int(run.steps[-1]))
    return Finding("unused_parameter", Severity.INFO, names, (first, last), ev, msg, remedy)
