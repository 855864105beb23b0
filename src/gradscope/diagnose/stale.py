"""stale_gradients: ``optimizer.zero_grad()`` is missing, so gradients keep accumulating across
optimizer steps: each update applies the sum of every gradient so far.

Exact, from the watch side (scope/loop.py): at the first backward after each optimizer step, the
scalar ``stale_grad_norm`` is the norm of what ``.grad`` still held (0 when it was cleared). Gradient
accumulation within a step is not affected. Flagged when the old gradient was still there on at
least ``persist`` of the steps after the first. Cheap: one scalar.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose._util import stretch
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "stale"
# Most steps: one step with stale gradients is a loop that skipped zero_grad once (e.g. a retry).
PERSIST = 0.5
MIN_STEPS = 2
DEFAULTS: dict[str, float] = {"persist": PERSIST, "min_steps": MIN_STEPS}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    s = run.scalars.get("stale_grad_norm")
    if s is None or run.num_steps == 0:
        return []
    later = np.isfinite(s) & (run.steps > run.steps[0])
    n = int(later.sum())
    with np.errstate(invalid="ignore"):
        hit = later & (s > 0)
    if n < cfg["min_steps"] or hit.sum() < cfg["persist"] * n:
        return []
    g = run.scalars.get("grad_norm")
    ev = {"steps_checked": n, "steps_not_cleared": int(hit.sum())}
    if g is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = g[hit].astype(np.float64) / s[hit]
        r = r[np.isfinite(r)]
        if r.size:
            ev["grad_norm_growth_median"] = float(np.median(r))
    msg = (f"Gradients are never cleared: on {int(hit.sum())} of {n} optimizer steps the previous "
           "step's gradient was still in .grad when the next backward began, so every update "
           "applies the sum of all gradients so far (optimizer.zero_grad() is missing or misplaced).")
    remedy = ("Call optimizer.zero_grad(set_to_none=True) once per optimizer step (after "
              "optimizer.step(), or before the forward). To accumulate on purpose, call "
              "optimizer.step() and zero_grad() together every k micro-batches, with the loss "
              "divided by k.")
    return [Finding("stale_gradients", Severity.ERROR, [], stretch(run.steps, hit), ev, msg, remedy)]
