"""frozen_parameters: which parameters are frozen (requires_grad False), grouped by module prefix.

Fine-tuning with a frozen backbone is legitimate, so a freeze alone is info. It is a warning when
most of the model (``warn_fraction`` of the elements) is frozen while the loss does not improve, or
(a classifier) ends within ``chance_margin`` of chance level, having learned little beyond the class
prior (see plateau.py): an accidentally frozen backbone. Cheap.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose import plateau
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "frozen"
# Half of the elements frozen: "most of the model".
WARN_FRACTION = 0.5
# A classifier whose loss ends within 7 % of ln C has learned little beyond the class prior: frozen
# random features still carry a little (losses 2-5 % under chance on an order task, over 5 seeds),
# a head on features that carry the task gets 20-50 % under it.
CHANCE_MARGIN = 0.07
DEFAULTS: dict[str, float] = {"enabled": 1, "warn_fraction": WARN_FRACTION, "chance_margin": CHANCE_MARGIN}


def groups(names: list[str], all_names: list[str]) -> list[str]:
    """Collapse frozen names into the shortest module prefixes whose parameters are all frozen."""
    frozen = set(names)
    out: list[str] = []
    for n in names:
        parts = n.split(".")
        best = n
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k]) + "."
            if all(m in frozen for m in all_names if m.startswith(prefix)):
                best = prefix + "*"
                break
        if best not in out:
            out.append(best)
    return out


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    if not cfg["enabled"]:
        return []
    rows = run.rows_of("param")
    frozen = [r for r in rows if not r.trainable]
    if not frozen:
        return []
    names = [r.name for r in frozen]
    grp = groups(names, [r.name for r in rows])
    n_frozen = sum(int(np.prod(r.shape)) for r in frozen)
    n_all = sum(int(np.prod(r.shape)) for r in rows)
    ev = {"frozen_params": len(frozen), "trainable_params": len(rows) - len(frozen),
          "frozen_elements": n_frozen, "frozen_fraction": n_frozen / n_all if n_all else 0.0}
    msg = (f"{len(frozen)} parameter(s) are frozen ({n_frozen:,} of {n_all:,} elements): "
           + ", ".join(grp[:8]) + (f" and {len(grp) - 8} more groups" if len(grp) > 8 else "") + ".")
    remedy = ("Nothing to do if you meant to freeze them (fine-tuning with a frozen backbone). If not, "
              "set requires_grad_(True) on them and add them to the optimizer.")
    sev = Severity.INFO
    if ev["frozen_fraction"] >= cfg["warn_fraction"] and (
            plateau.stuck(run, plateau.DEFAULTS) or plateau.ends_near_chance(run, cfg["chance_margin"])):
        sev = Severity.WARNING
        msg += (f" {ev['frozen_fraction']:.0%} of the model is frozen and the loss does not improve: "
                "the backbone is probably frozen by mistake.")
        remedy = ("Unfreeze the backbone (p.requires_grad_(True) for its parameters, and give them to "
                  "the optimizer), or if the freeze is meant, give the trainable head a higher "
                  "learning rate; a frozen model whose loss does not move learns nothing.")
    steps = (int(run.steps[0]), int(run.steps[-1])) if run.num_steps else None
    return [Finding("frozen_parameters", sev, grp, steps, ev, msg, remedy)]
