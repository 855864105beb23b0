"""nonfinite: the first step with NaN/Inf, and the layer that produced it (not the ones passing it on).

Forward: the lowest-depth module whose output went non-finite at the first bad step (its inputs come
from lower depths, which were finite). Backward (no output non-finite): gradients flow from high depth
to low, so the producer is the module whose input gradient went non-finite while the gradient into
its output was still finite: the module just above the highest-depth non-finite flow row. Without
flow rows, the highest-depth parameter with a non-finite gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "nonfinite"
# Any non-finite value is an error; nothing to tune but whether to report at all.
DEFAULTS: dict[str, float] = {"enabled": 1}


def _bad(a: np.ndarray) -> np.ndarray:
    """[steps x rows] mask of non-finite counts > 0 (NaN = not recorded, so not bad)."""
    with np.errstate(invalid="ignore"):
        return a > 0  # NaN > 0 is False


def _loss_bad(run: Run) -> np.ndarray:
    """Steps whose logged loss is non-finite. NaN also means "not logged", so a NaN counts only after
    a prefix of at least 3 steps that all logged a value (the loss is logged every step)."""
    loss = run.scalars.get("loss")
    if loss is None:
        return np.zeros(run.num_steps, bool)
    bad = np.isinf(loss)
    nan = np.flatnonzero(np.isnan(loss))
    if nan.size and nan[0] >= 3:
        bad[nan[0]:] |= np.isnan(loss[nan[0]:])
    return bad


def _by_depth(run: Run, kind: str, mask: np.ndarray) -> list[int]:
    return [c for c in run.depth_order(kind) if mask[c]]


def origin_at(run: Run, i: int, act: np.ndarray, flow: np.ndarray, par: np.ndarray,
              loss_bad: bool) -> dict[str, Any]:
    """{layer, step, phase, module_type} of the producer at step index ``i``."""
    step = int(run.steps[i])
    acts, flows, pars = run.rows_of("act"), run.rows_of("flow"), run.rows_of("param")
    bad_act = _by_depth(run, "act", act[i])
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
    gbad = np.isinf(g) if g is not None else np.zeros(run.num_steps, bool)
    step_bad = act.any(axis=1) | flow.any(axis=1) | par.any(axis=1) | loss | gbad
    idx = np.flatnonzero(step_bad)
    if idx.size == 0:
        return []
    i = int(idx[0])
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
    if origin["phase"] == "forward":
        where = f"the output of {named} in the forward pass"
    elif origin["layer"] not in (None, "loss"):
        where = f"the backward of {named}"
    elif origin["phase"] == "loss":
        where = "the loss"
    else:
        where = "the global gradient norm (it overflowed to Inf while every element was finite)"
    msg = (f"NaN/Inf first appears at step {ev['first_step']} in {where}; {idx.size} of "
           f"{run.num_steps} recorded steps have non-finite values"
           + (f" and {len(pnames)} parameter gradient(s) are non-finite at that step." if pnames else "."))
    return [Finding("nonfinite", Severity.ERROR, layers, (int(run.steps[i]), int(run.steps[idx[-1]])),
                    ev, msg, _remedy(origin), origin=origin)]


def _remedy(o: dict[str, Any]) -> str:
    step = o["step"]
    amp = ("Under fp16 AMP, use torch.amp.GradScaler (it skips Inf steps and lowers the loss scale), "
           "or train in bf16.")
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
