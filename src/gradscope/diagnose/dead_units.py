"""dead_units: ReLU-family layers whose units give no positive output over whole steps ("dying ReLU",
Lu et al. 2019, "Dying ReLU and Initialization: Theory and Numerical Examples").

dead_frac is recorded per step: the fraction of a layer's units (features, or channels for conv
outputs) that were <= 0 for every sample of the step. A dead unit gets no gradient, so it stays dead.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose._util import persistent_rows, stretch
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "dead_units"
# Half of a layer's units dead: healthy He-initialised ReLU nets keep dead units to a few percent
# (Lu et al. 2019 report collapse only past deep/narrow configurations); half is well outside that.
FRAC = 0.5
# Nine in ten dead: the layer is effectively gone.
ERROR_FRAC = 0.9
# The fraction must hold on at least this share of the recorded steps ...
PERSIST = 0.5
# ... and for a run of consecutive steps at least this long (or the whole run when shorter).
MIN_STEPS = 10
DEFAULTS: dict[str, float] = {
    "frac": FRAC, "error_frac": ERROR_FRAC, "persist": PERSIST, "min_steps": MIN_STEPS,
}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    rows = run.rows_of("act")
    findings = []
    for p in persistent_rows(run, "dead_frac", cfg):
        c, col, valid, hit, frac, longest, med = p.col, p.values, p.valid, p.hit, p.frac_steps, p.longest, p.median
        sev = Severity.ERROR if med >= cfg["error_frac"] else Severity.WARNING
        r = rows[c]
        ev = {"dead_frac_median": med, "dead_frac_max": float(np.max(col[valid])),
              "frac_steps": float(frac), "longest_stretch": int(longest),
              "zero_frac_median": _median(run.metric("act", "zero_frac")[:, c]), "depth": r.depth}
        msg = (f"{med:.0%} of the units of {r.name} ({r.module_type}) are dead (no positive output "
               f"over a whole step) on {frac:.0%} of steps; they get no gradient and do not recover.")
        remedy = ("Use LeakyReLU/ELU/GELU so that negative inputs still pass a gradient; lower the "
                  "learning rate (large updates push units into the dead region); initialise biases "
                  "at 0 or slightly positive (e.g. 0.01) and weights with He init; normalise the "
                  f"input of {r.name} (BatchNorm/LayerNorm) so pre-activations stay centred.")
        starved = _starved(run, r.depth) if med >= cfg["error_frac"] else []
        if starved:
            ev["starved_params"] = starved
            msg += (f" Every layer before it, and the weight of the layer that reads its all-zero output, "
                    f"get exactly zero gradient ({len(starved)} parameter(s) never move).")
        findings.append(Finding("dead_units", sev, [r.name], stretch(run.steps, hit), ev, msg, remedy))
    return findings


def _starved(run: Run, depth: int | None) -> list[str]:
    """Trainable parameters whose gradient was exactly zero on every step because of the dead layer
    at ``depth``: every one before it, and the weight of the layer that reads its (all-zero) output."""
    if depth is None:
        return []
    from gradscope.diagnose.unused import unused_cols

    _, zeros = unused_cols(run, 1)
    rows = run.rows_of("param")
    after = [r.depth for r in rows if r.depth is not None and r.depth > depth]
    reader = min(after) if after else depth
    return [rows[c].name for c in zeros if rows[c].depth is not None and rows[c].depth <= reader]


def _median(col: np.ndarray) -> float | None:
    col = col[~np.isnan(col)]
    return float(np.median(col)) if col.size else None
