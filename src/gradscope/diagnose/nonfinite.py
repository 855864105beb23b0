"""nonfinite: the first step with NaN/Inf, and the layer that produced it (not the ones passing it on).

Forward: the lowest-depth module whose output went non-finite at the first bad step (its inputs come
from lower depths, which were finite). Backward (no output non-finite): gradients flow from high depth
to low, so the producer is the module whose input gradient went non-finite while the gradient into
its output was still finite: the module just above the highest-depth non-finite flow row. Without
flow rows, the highest-depth parameter with a non-finite gradient.

Runs read from a TensorBoard log (scalars only) have no rows: the origin is the loss or the global
norm (phase ``loss`` / ``global``, no layer). There a NaN also fills steps where a tag logged nothing,
so a NaN counts only at a step where a companion tag of the same logging cadence (loss, grad_norm,
lr) has a value, or where no tag has a finite value (the step exists because something logged NaN).

Under AMP the GradScaler skips the optimizer step when the scaled gradients overflow and lowers the
loss scale: such steps (scalar ``amp_skipped`` == 1) are expected and are not errors. They are
counted in an ``amp_overflow`` finding: info, or a warning past ``amp_warn_frac`` of the steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose._util import amp_skipped
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "nonfinite"
# Any non-finite value outside an AMP-skipped step is an error.
# GradScaler (growth_interval=2000, backoff 0.5) skips about one step per 2000 once the scale has
# settled (it grows, overflows once, backs off), plus a few consecutive skips at the start while a
# too-high init_scale is halved down. Past 5 % of the steps after that calibration, overflows are
# not the scale probing its ceiling: values overflow (or are NaN) whatever the scale, and each skip
# throws a batch away. At least 3 such skips, so that one skip in a short run is not 5 %.
AMP_WARN_FRAC = 0.05
AMP_MIN_SKIPS = 3
DEFAULTS: dict[str, float] = {"enabled": 1, "amp_warn_frac": AMP_WARN_FRAC, "amp_min_skips": AMP_MIN_SKIPS}
# Scalars a training loop logs together at each logging step (a transformers Trainer: loss,
# grad_norm, learning_rate): a value of one at a step marks a logging step for the others.
PER_STEP = ("loss", "grad_norm", "lr")


def _bad(a: np.ndarray) -> np.ndarray:
    """[steps x rows] mask of non-finite counts > 0 (NaN = not recorded, so not bad)."""
    with np.errstate(invalid="ignore"):
        return a > 0  # NaN > 0 is False


def scalar_only(run: Run) -> bool:
    """A run with scalars and no rows (read from a TensorBoard log of another tool)."""
    return run.manifest.get("format") == "tensorboard" or (not run.rows and bool(run.scalars))


def _loss_bad(run: Run) -> np.ndarray:
    """Steps whose logged loss is non-finite. NaN also means "not logged", so a NaN counts only after
    a prefix of at least 3 steps that all logged a value (the loss is logged every step), and not
    when it is the last step alone (a loop that stopped before logging)."""
    loss = run.scalars.get("loss")
    if loss is None:
        return np.zeros(run.num_steps, bool)
    if scalar_only(run):
        return logged_nonfinite(run, "loss")
    bad = np.isinf(loss)
    nan = np.flatnonzero(np.isnan(loss))
    if nan.size and nan[0] == loss.shape[0] - 1:
        return bad  # only the last step: the loop stopped (or crashed) before logging its loss
    if nan.size and nan[0] >= 3:
        bad[nan[0]:] |= np.isnan(loss[nan[0]:])
    return bad


def logged_nonfinite(run: Run, name: str) -> np.ndarray:
    """Steps where scalar ``name`` of a TensorBoard-read run was logged as NaN or Inf (see above)."""
    a = run.scalars.get(name)
    if a is None:
        return np.zeros(run.num_steps, bool)
    mask = getattr(run, "logged", {}).get(name)
    if mask is not None:  # the reader knows where the tag was logged: a logged NaN/Inf is a value
        return mask & ~np.isfinite(a)
    fin = np.isfinite(a)
    any_other = np.zeros(run.num_steps, bool)
    companion = np.zeros(run.num_steps, bool)
    for other, values in run.scalars.items():
        if other == name:
            continue
        c = np.isfinite(values)
        any_other |= c
        if other in PER_STEP and fin.sum() >= 3 and c[fin].mean() >= 0.9:
            companion |= c
    return np.isinf(a) | (np.isnan(a) & (companion | ~any_other))


def _by_depth(run: Run, kind: str, mask: np.ndarray) -> list[int]:
    return [c for c in run.depth_order(kind) if mask[c]]


def _container_at(run: Run, i: int) -> dict[str, Any] | None:
    """The earliest container whose output was non-finite at step index ``i`` (from the scalar
    ``nonfinite_container`` and the manifest's ``containers``), or None."""
    s = run.scalars.get("nonfinite_container")
    blocks = run.manifest.get("containers")
    if s is None or not isinstance(blocks, list) or not np.isfinite(s[i]) or s[i] < 0:
        return None  # -1: no container output was non-finite
    k = int(s[i])
    if not 0 <= k < len(blocks) or not isinstance(blocks[k], dict):
        return None
    b = blocks[k]
    if not isinstance(b.get("name"), str) or not isinstance(b.get("after_depth"), int):
        return None
    return b


def origin_at(run: Run, i: int, act: np.ndarray, flow: np.ndarray, par: np.ndarray,
              loss_bad: bool) -> dict[str, Any]:
    """{layer, step, phase, module_type} of the producer at step index ``i``."""
    step = int(run.steps[i])
    acts, flows, pars = run.rows_of("act"), run.rows_of("flow"), run.rows_of("param")
    inp = run.scalars.get("input_nonfinite")
    if inp is not None and inp[i] > 0:
        return {"layer": "input", "step": step, "phase": "input", "module_type": None}
    bad_act = _by_depth(run, "act", act[i])
    block = _container_at(run, i)
    if block is not None and (not bad_act or (acts[bad_act[0]].depth or 0) > block["after_depth"]):
        # The block's output went non-finite while every leaf that ran before it was finite: its
        # own maths (between or after its children) made it.
        return {"layer": block["name"], "step": step, "phase": "forward",
                "module_type": block.get("module_type")}
    if bad_act:
        r = acts[bad_act[0]]
        return {"layer": r.name, "step": step, "phase": "forward", "module_type": r.module_type}
    bad_flow = _by_depth(run, "flow", flow[i])
    if bad_flow:
        top = flows[bad_flow[-1]]
        fl = run.metric("flow", "nonfinite")[i]
        above = [c for c in run.depth_order("flow")
                 if flows[c].depth is not None and top.depth is not None and flows[c].depth > top.depth
                 and not np.isnan(fl[c]) and fl[c] == 0]
        if above:
            r = flows[above[0]]
            return {"layer": r.name, "step": step, "phase": "backward", "module_type": r.module_type}
        if loss_bad:
            return {"layer": "loss", "step": step, "phase": "loss", "module_type": None}
        return {"layer": top.name, "step": step, "phase": "backward", "module_type": top.module_type}
    bad_par = _by_depth(run, "param", par[i])
    if bad_par:
        r = pars[bad_par[-1]]
        return {"layer": r.name, "step": step, "phase": "backward", "module_type": r.module_type}
    phase = "loss" if loss_bad else "backward"
    return {"layer": "loss" if loss_bad else None, "step": step, "phase": phase, "module_type": None}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    if not cfg["enabled"] or run.num_steps == 0:
        return []
    act = _bad(run.metric("act", "nonfinite"))
    flow = _bad(run.metric("flow", "nonfinite"))
    par = _bad(run.metric("param", "grad_nonfinite"))
    loss = _loss_bad(run)
    g = run.scalars.get("grad_norm")
    if scalar_only(run):
        gbad = logged_nonfinite(run, "grad_norm")
    else:
        gbad = np.isinf(g) if g is not None else np.zeros(run.num_steps, bool)
    skipped = amp_skipped(run)
    extra = np.zeros(run.num_steps, bool)
    for name in ("input_nonfinite", "nonfinite_container"):
        v = run.scalars.get(name)
        if v is not None:
            with np.errstate(invalid="ignore"):
                extra |= (v > 0) if name == "input_nonfinite" else (v >= 0)
    step_bad = (act.any(axis=1) | flow.any(axis=1) | par.any(axis=1) | loss | gbad | extra) & ~skipped
    found = amp_finding(run, skipped, cfg)
    idx = np.flatnonzero(step_bad)
    if idx.size == 0:
        return found
    i = int(idx[0])
    if scalar_only(run):
        phase = "loss" if loss[i] else "global"
        origin: dict[str, Any] = {"layer": None, "step": int(run.steps[i]), "phase": phase,
                                  "module_type": None}
    else:
        origin = origin_at(run, i, act, flow, par, bool(loss[i]))
    layers = [n for n in [origin["layer"]] if n]
    pnames = [r.name for r, b in zip(run.rows_of("param"), par[i], strict=True) if b]
    ev = {
        "first_step": int(run.steps[i]),
        "nonfinite_steps": int(idx.size),
        "act_rows_nonfinite": int(act[i].sum()),
        "flow_rows_nonfinite": int(flow[i].sum()),
        "param_rows_nonfinite": int(par[i].sum()),
        "recovered": bool(not step_bad[-1]),
    }
    named = f"{origin['layer']} ({origin['module_type']})"
    if origin["phase"] == "input":
        where = "the input batch itself (the data, before any layer)"
    elif origin["phase"] == "forward":
        where = f"the output of {named} in the forward pass"
    elif origin["layer"] not in (None, "loss"):
        where = f"the backward of {named}"
    elif origin["phase"] == "loss":
        where = "the loss"
    elif scalar_only(run):
        where = "the global gradient norm (the log has no per-layer statistics to locate the producer)"
    else:
        where = "the global gradient norm (it overflowed to Inf while every element was finite)"
    msg = (f"NaN/Inf first appears at step {ev['first_step']} in {where}; {idx.size} of "
           f"{run.num_steps} recorded steps have non-finite values"
           + (f" and {len(pnames)} parameter gradient(s) are non-finite at that step." if pnames else "."))
    remedy = _remedy(origin)
    if scalar_only(run):
        remedy += (" To find the layer that produces it, record the run with gradscope.watch(model, "
                   "optimizer, log_dir=RUN) and run gradscope analyze RUN.")
    found.append(Finding("nonfinite", Severity.ERROR, layers, (int(run.steps[i]), int(run.steps[idx[-1]])),
                         ev, msg, remedy, origin=origin))
    return found


def amp_finding(run: Run, skipped: np.ndarray, cfg: dict[str, float]) -> list[Finding]:
    """Info (or warning past ``amp_warn_frac``) on the steps the GradScaler skipped."""
    n = int(skipped.sum())
    if n == 0:
        return []
    ok = np.flatnonzero(~skipped)
    lead = int(ok[0]) if ok.size else n  # consecutive skips at the start: the scale calibrating
    later = n - lead
    frac = later / max(1, run.num_steps - lead)
    ev: dict[str, Any] = {"skipped_steps": n, "skipped_frac": n / run.num_steps,
                          "calibration_skips": lead, "skipped_frac_after_calibration": frac}
    scale = run.scalars.get("amp_scale")
    if scale is not None and np.isfinite(scale).any():
        ev["scale_min"] = float(np.nanmin(scale))
        ev["scale_max"] = float(np.nanmax(scale))
        ev["scale_last"] = float(scale[np.flatnonzero(np.isfinite(scale))[-1]])
    warn = frac > cfg["amp_warn_frac"] and later >= cfg["amp_min_skips"]
    idx = np.flatnonzero(skipped)
    msg = (f"{n} AMP overflow step{'s' if n != 1 else ''} skipped by the GradScaler "
           f"({n / run.num_steps:.1%} of {run.num_steps} steps"
           + (f"; {lead} at the start while the loss scale calibrated" if lead else "") + ").")
    if warn:
        msg += (f" {frac:.1%} of the steps after calibration is far more than a settled loss scale "
                f"skips (about 1 per growth_interval): gradients overflow or are NaN whatever the scale.")
        remedy = ("Find what overflows: rerun the first skipped step without autocast (or in bf16) and "
                  "check its loss and gradients for NaN/Inf (a bad batch, log/div by ~0, an fp16 "
                  "overflow in attention or a softmax); lower the learning rate; if the loss scale "
                  "keeps falling, the values are NaN in fp32 too, not an fp16 overflow.")
    else:
        remedy = ("Nothing to do: under fp16 AMP the GradScaler skips an overflowing step and lowers "
                  "the loss scale; a few skips (mostly at the start) are expected.")
    sev = Severity.WARNING if warn else Severity.INFO
    return [Finding("amp_overflow", sev, [], (int(run.steps[idx[0]]), int(run.steps[idx[-1]])), ev, msg,
                    remedy)]


def _remedy(o: dict[str, Any]) -> str:
    step = o["step"]
    amp = ("Under fp16 AMP, use torch.amp.GradScaler (it skips Inf steps and lowers the loss scale) and "
           "pass it to gradscope.watch(model, optimizer, scaler=scaler), so a skipped step is recorded as an "
           "AMP skip rather than as this failure; or train in bf16.")
    if o["phase"] == "input":
        return (f"The batch at step {step} already holds NaN/Inf before the model sees it: check the "
                "data pipeline (a corrupt file, a division by a zero std in normalisation, a missing "
                "value read as NaN); filter or assert torch.isfinite(x).all() in the data loader.")
    if o["phase"] == "forward":
        return (f"Look at the forward of {o['layer']} ({o['module_type']}): an op there turns finite "
                "inputs into NaN/Inf: log or sqrt of a value <= 0, division by ~0, exp overflow, "
                "0 * inf, a softmax over all -inf. Clamp its input (x.clamp_min(eps)), use the stable "
                "op (logsumexp, log_softmax, F.cross_entropy on logits), and rerun up to step "
                f"{step} under torch.autograd.detect_anomaly() to get the exact op. " + amp)
    if o["phase"] == "loss":
        return ("The loss itself is non-finite: use a numerically stable loss on logits "
                "(F.cross_entropy, F.binary_cross_entropy_with_logits), clamp probabilities, check "
                f"the targets of the batch at step {step}. " + amp)
    return (f"Look at the backward of {o['layer']} ({o['module_type']}): a custom autograd.Function "
            "backward, a sqrt/pow/norm at 0 (infinite derivative), or a division by a tiny value. Run "
            f"step {step} under torch.autograd.detect_anomaly() to get the op. " + amp)
