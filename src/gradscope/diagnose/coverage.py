"""What a diagnosis could check on a run, and what it could not (so "healthy" is never said of
nothing): a run with no steps, a ``--layers`` glob that matched no row, a foreign log whose tags
were not recognised, a run without losses. Cheap: counts over the arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose._util import RNN_TYPES, SPARSE_TYPES, loss_trend, sampled_steps, used_param_cols
from gradscope.run.reader import Run

# Scalars the detectors read (a foreign TensorBoard log is useful only when it has one of these).
KNOWN_SCALARS = ("grad_norm", "loss", "lr", "amp_scale", "amp_skipped", "clip_coef")


def _any_finite(a: np.ndarray) -> bool:
    """Whether ``a`` holds a finite value, looking at the first steps before the whole array."""
    head = a[:1000]
    return bool(np.isfinite(head).any() or np.isfinite(a[1000:]).any())


def coverage(run: Run) -> dict[str, Any]:
    """{"checked": [what was checked], "not_checked": [what could not be, and why], "anything": bool}."""
    checked: list[str] = []
    missing: list[str] = []
    sel = run.manifest.get("selection") if isinstance(run.manifest.get("selection"), dict) else {}
    if run.num_steps == 0:
        why = (f"--steps {sel['steps']} selects no recorded step" if sel.get("steps")
               else "the run has no recorded step")
        return {"checked": [], "not_checked": [f"everything: {why}"], "anything": False}
    if sel.get("layers") and not run.rows:
        missing.append(f"per-layer checks: --layers {' '.join(sel['layers'])} matches no row")
    params = run.rows_of("param")
    used = used_param_cols(run) if params else []
    grads = len(used)
    if grads:
        depth = sum(len(params[c].shape) >= 2 and params[c].module_type not in SPARSE_TYPES | RNN_TYPES
                    and params[c].depth is not None for c in used)  # the columns weight_profile keeps
        checked.append(f"NaN/Inf and gradient size in {grads} parameters")
        (checked if depth >= 3 else missing).append(
            f"gradient flow with depth ({depth} dense layers)" if depth >= 3
            else "gradient flow with depth: fewer than 3 dense layers got gradients")
        sampled = sampled_steps(run).size > 0
        (checked if sampled else missing).append(
            "update sizes (||dw||/||w||)" if sampled else "update sizes: no update ratio sampled")
    elif params:
        missing.append("gradients: no parameter received a gradient (no backward was recorded)")
    acts = run.rows_of("act")
    if acts and _any_finite(run.metric("act", "mean")):
        checked.append(f"activations of {len(acts)} modules (dead units, saturation, NaN origin)")
    elif acts:
        missing.append("activations: no training-mode forward was recorded (the model was in eval() "
                       "mode or under no_grad: call model.train())")
    known = [k for k in KNOWN_SCALARS if k in run.scalars and np.isfinite(run.scalars[k]).any()]
    if "grad_norm" in known:
        checked.append("spikes and growth of the global gradient norm")
    if loss_trend(run) is not None:
        checked.append("loss trend and loss spikes")
    else:
        missing.append("loss trend: fewer than 20 losses logged (scope.log(loss=loss))")
    if not run.rows and run.scalars and not known:
        missing.append(f"scalars: none of the tags was recognised ({', '.join(sorted(run.scalars)[:6])})")
    if any(e.get("kind") == "exception" for e in run.events):
        checked.append("the exception recorded at close")
    return {"checked": checked, "not_checked": missing, "anything": bool(checked)}
