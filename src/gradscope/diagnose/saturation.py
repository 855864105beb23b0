"""saturation: sigmoid/tanh outputs pinned near their bounds, where the derivative is ~0 (LeCun et al.
1998, "Efficient BackProp"; Glorot & Bengio 2010 on saturated top sigmoid layers).

sat_frac is recorded per step for bounded modules: the fraction of outputs within 1 % of a bound
(|y - centre| > 0.98 * half-width, e.g. sigmoid < 0.01 or > 0.99, pre-activation |z| > ~4.6).
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose._util import persistent_rows, stretch
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "saturation"
# A third of the outputs in the flat 1 % tails: healthy sigmoid/tanh layers sit mostly in their linear
# range (LeCun et al. 1998 advise inputs and init that keep them there); a third is far past that.
FRAC = 0.3
# Seven in ten saturated: the layer passes almost no gradient.
ERROR_FRAC = 0.7
PERSIST = 0.5
MIN_STEPS = 10
DEFAULTS: dict[str, float] = {
    "frac": FRAC, "error_frac": ERROR_FRAC, "persist": PERSIST, "min_steps": MIN_STEPS,
}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    rows = run.rows_of("act")
    findings = []
    for p in persistent_rows(run, "sat_frac", cfg):
        c, col, valid, hit, frac, longest, med = p.col, p.values, p.valid, p.hit, p.frac_steps, p.longest, p.median
        r = rows[c]
        sev = Severity.ERROR if med >= cfg["error_frac"] else Severity.WARNING
        ev = {"sat_frac_median": med, "sat_frac_max": float(np.max(col[valid])),
              "frac_steps": float(frac), "longest_stretch": int(longest)}
        msg = (f"{med:.0%} of the outputs of {r.name} ({r.module_type}) sit within 1% of its bounds on "
               f"{frac:.0%} of steps: the derivative there is ~0, so little gradient passes.")
        remedy = ("Use a ReLU-family activation (ReLU, LeakyReLU, ELU, GELU) in hidden layers; if the "
                  f"{r.module_type} must stay (gates, outputs), normalise its input (BatchNorm/LayerNorm), "
                  "initialise the layer before it with Xavier init (smaller weights keep "
                  "pre-activations in the linear range) and lower the learning rate; for a sigmoid "
                  "output, train on logits (BCEWithLogitsLoss).")
        findings.append(Finding("saturation", sev, [r.name], stretch(run.steps, hit), ev, msg, remedy))
    return findings
