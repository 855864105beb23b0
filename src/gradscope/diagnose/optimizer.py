"""not_in_optimizer: trainable parameters that get gradients but are in no optimizer's
param_groups, so they never move (a head or adapter added after the optimizer was built, a
param group built from a filtered list).

Exact, from the watch side: the ``not_in_optimizer`` event lists the trainable parameters that no
optimizer given to watch() held at its first step. Flagged for those that received a non-zero
gradient. Cheap.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "optimizer"
DEFAULTS: dict[str, float] = {"enabled": 1}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    if not cfg["enabled"] or run.num_steps == 0:
        return []
    names: list[str] = []
    for e in run.events:
        if e.get("kind") == "not_in_optimizer" and isinstance(e.get("params"), list):
            names += [n for n in e["params"] if isinstance(n, str)]
    if not names:
        return []
    rows = run.rows_of("param")
    col = {r.name: c for c, r in enumerate(rows)}
    gn = run.metric("param", "grad_norm")
    with np.errstate(invalid="ignore"):
        got = [n for n in names if n in col and bool(np.any(gn[:, col[n]] > 0))]
    unwatched = [n for n in names if n not in col]
    layers = got + unwatched
    if not layers:
        return []
    elems = sum(int(np.prod(rows[col[n]].shape)) for n in got)
    shown = ", ".join(layers[:6]) + (f" and {len(layers) - 6} more" if len(layers) > 6 else "")
    ev = {"params": len(layers), "elements": elems, "with_gradient": len(got)}
    msg = (f"{len(layers)} trainable parameter(s) get gradients but are in no optimizer's param_groups, "
           f"so they never change: {shown}.")
    remedy = ("Build the optimizer after the model is complete (after adding heads or adapters), from "
              "model.parameters(), or add the missing ones with optimizer.add_param_group({'params': "
              "[...]}); if they are meant to stay fixed, set requires_grad_(False) on them.")
    steps = (int(run.steps[0]), int(run.steps[-1]))
    return [Finding("not_in_optimizer", Severity.ERROR, layers, steps, ev, msg, remedy)]
