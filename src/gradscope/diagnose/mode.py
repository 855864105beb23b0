"""eval_mode: the model trained in eval mode, the forgotten ``model.train()`` after a validation
pass: dropout is off and BatchNorm normalises with its running statistics (and stops updating them),
so the optimizer trains a different model than the one meant, and the validation numbers stop
meaning what they should.

Exact, from the watch side (scope/loop.py): scalar ``model_eval_mode`` is 1 when the watched model
was in eval mode at the first backward of a step. A warning when the model switched to eval mode
after training in train mode (the validation pass without ``model.train()`` after it: the model
changes behaviour mid-run) and has modules whose behaviour depends on the mode (dropout, batch
norm). Info when it was in eval mode from its first step (``from_pretrained`` returns a model in eval
mode: a fine-tune without dropout, which may be deliberate and usually trains fine), or has no such
module (the maths is the same). Also info: the model in train mode but most of its dropout and
batch-norm layers in eval mode (scalar ``eval_mode_layers``): a ``from_pretrained`` backbone inside a
wrapper stays in eval mode until ``model.train()`` is called on the wrapper; frozen batch norm on
purpose looks the same. Cheap: two scalars.
"""

from __future__ import annotations

import numpy as np

from gradscope.diagnose._util import stretch
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.format import MODE_TYPES
from gradscope.run.reader import Run

NAME = "mode"
MIN_STEPS = 1
DEFAULTS: dict[str, float] = {"min_steps": MIN_STEPS}


# Most (half or more) of the dropout and batch-norm layers in eval mode on most recorded steps while
# the model itself trains in train mode.
LAYERS_SHARE = 0.5
DEFAULTS["layers_share"] = LAYERS_SHARE


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    m = run.scalars.get("model_eval_mode")
    if m is None or run.num_steps == 0:
        return []
    whole = _whole_model(run, m, cfg)
    if whole:
        return whole
    layers = _layers(run, m, cfg)
    return [layers] if layers is not None else []


def _layers(run: Run, m: np.ndarray, cfg: dict[str, float]) -> Finding | None:
    """Info: the model trains in train mode but most of its dropout/batch-norm layers are in eval mode."""
    share = run.scalars.get("eval_mode_layers")
    if share is None:
        return None
    with np.errstate(invalid="ignore"):
        seen = np.isfinite(share) & (m < 0.5)
        hit = seen & (share >= cfg["layers_share"])
    n, k = int(seen.sum()), int(hit.sum())
    if n == 0 or k < 0.5 * n:
        return None
    rows = [r for r in run.rows if r.module_type in MODE_TYPES and r.kind != "flow"]
    types = sorted({r.module_type for r in rows})
    frac = float(np.median(share[hit]))
    ev = {"steps_checked": n, "steps_with_layers_in_eval": k, "eval_fraction_median": frac, "module_types": types}
    msg = (f"The model trained in train mode, but {frac:.0%} of its {'/'.join(types) or 'dropout/batch-norm'} "
           f"layers were in eval mode on {k} of {n} steps: dropout off (batch norm on running statistics) in "
           "that part. A from_pretrained backbone inside a wrapper stays in eval mode (from_pretrained "
           "returns one) until model.train() is called on the wrapper; frozen batch norm on purpose looks the same.")
    remedy = ("If that part should train with dropout, call model.train() on the whole model after building "
              "it (and after each validation pass). If the layers are in eval mode on purpose, nothing to do.")
    return Finding("eval_mode", Severity.INFO, [], stretch(run.steps, hit), ev, msg, remedy)


def _whole_model(run: Run, m: np.ndarray, cfg: dict[str, float]) -> list[Finding]:
    """The model itself in eval mode on training steps (see the module docstring)."""
    seen = np.isfinite(m)
    with np.errstate(invalid="ignore"):
        hit = seen & (m > 0.5)
    n, k = int(seen.sum()), int(hit.sum())
    if k < cfg["min_steps"]:
        return []
    mode_modules = sorted({r.name.rsplit(".", 1)[0] if r.kind == "param" else r.name
                           for r in run.rows if r.module_type in MODE_TYPES})
    types = sorted({r.module_type for r in run.rows if r.module_type in MODE_TYPES})
    at = int(np.flatnonzero(hit)[0])
    first = int(run.steps[at])
    switched = bool((seen & ~hit)[:at].any())  # trained in train mode before: a mid-run switch
    back = bool((seen & ~hit)[at:].any())  # train mode again after it
    ev = {"steps_checked": n, "steps_in_eval_mode": k, "first_step": first, "switched_mid_run": switched,
          "mode_dependent_modules": len(mode_modules), "module_types": types}
    effects = [text for text, on in (("dropout was off", any("Dropout" in t for t in types)),
                                     ("batch norm used its running statistics, which stopped updating",
                                      any("Norm" in t for t in types))) if on]
    affected = (f"{' and '.join(effects)} ({len(mode_modules)} such layers)" if effects
                else "it has no dropout or batch norm, so the maths was the same")
    cause = ("A validation pass that calls model.eval() without model.train() after it does this."
             if switched else "It was in eval mode from the first step: from_pretrained returns a model in "
             "eval mode, and the loop never called model.train().")
    msg = (f"The model trained in eval mode on {k} of {n} steps (from step {first}"
           + (", on and off" if back else "") + f"): {affected}. {cause}")
    remedy = ("Call model.train() at the start of every training epoch (after each validation pass). To "
              "train without dropout on purpose, set its p to 0 and keep train mode; to freeze batch norm, "
              "call .eval() on those layers only, after model.train().")
    sev = Severity.WARNING if types and switched else Severity.INFO
    return [Finding("eval_mode", sev, mode_modules[:20], stretch(run.steps, hit), ev, msg, remedy)]
