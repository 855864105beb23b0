"""vanishing_gradient: gradients shrink with depth by orders of magnitude (Hochreiter 1991;
Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks").

Two depth profiles are used: the RMS gradient of each dense weight (norm / sqrt(numel), so layer
shapes do not masquerade as decay) and the norm of the gradient flowing into each module's output.
Only like-for-like layers are compared: the same role in each block of a stack (the query projection
of every transformer block, the n-th Linear of an MLP: see ``_util.by_role``), because layers of
different roles differ by orders of magnitude for reasons that have nothing to do with depth (at
random init an attention query/key weight gets ~1e-3 of the gradient of the value weight beside it,
since near-uniform softmax passes little gradient to the logits). Within a role, flagged when first /
last stays below ``ratio`` on at least ``persist`` of the steps and the decay is consistent: the
median gradient grows from each layer to the next on at least ``consistency`` of adjacent pairs.
Embeddings (sparse) and norm gains/biases (1-D) are never in the weight profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradscope.diagnose._util import (
    Profile,
    by_role,
    first_last_ratio,
    flow_profile,
    nanmedian,
    role,
    stretch,
    weight_profile,
)
from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "vanishing"
# First layer's gradient 1000x below the last one's. Well-initialised nets (He/Xavier) keep layers
# within one or two orders of magnitude (Glorot & Bengio 2010, fig. 7), so three orders is past the
# spread that layer shapes and depth alone produce.
RATIO = 1e-3
# Five orders of magnitude: with any usual learning rate the first layers then barely move at all.
ERROR_RATIO = 1e-5
# The ratio must hold on half of the recorded steps: a stretch of training, not a few odd batches.
PERSIST = 0.5
# "With depth" needs at least three layers to mean anything.
MIN_LAYERS = 3
# Two in three adjacent pairs must decay toward the input: noise reorders neighbours of a healthy
# stack about half the time, a vanishing stack decays at (almost) every layer.
CONSISTENCY = 2 / 3
DEFAULTS: dict[str, float] = {
    "ratio": RATIO, "error_ratio": ERROR_RATIO, "persist": PERSIST, "min_layers": MIN_LAYERS,
    "consistency": CONSISTENCY,
}

BOUNDED = ("Sigmoid", "Tanh", "Hardsigmoid", "Hardtanh", "Softsign")


def consistent(prof: Profile, shrinking: bool) -> float:
    """Share of adjacent layer pairs whose median grows toward the output (``shrinking`` toward the
    input), or shrinks toward the output when not ``shrinking``."""
    vals = prof.values[:: max(1, prof.values.shape[0] // 10_000)]
    med = nanmedian(np.where(np.isfinite(vals), vals, np.nan), axis=0)
    pairs = [(a, b) for a, b in zip(med[:-1], med[1:], strict=True) if np.isfinite(a) and np.isfinite(b)]
    if not pairs:
        return 0.0
    return sum((a < b) if shrinking else (a > b) for a, b in pairs) / len(pairs)


def depth_trend(prof: Profile, low: float | None, high: float | None,
                persist: float, consistency: float = 0.0) -> dict[str, Any] | None:
    """Evidence when first/last stays below ``low`` (or above ``high``) on ``persist`` of the steps
    and at least ``consistency`` of adjacent layer pairs move the same way."""
    r = first_last_ratio(prof)
    valid = ~np.isnan(r)
    n = int(valid.sum())
    if n == 0:
        return None
    hit = valid & ((r < low) if low is not None else (r > high))
    frac = float(hit.sum()) / n
    med = float(np.median(r[valid]))
    beyond = med < low if low is not None else med > high
    if frac < persist or not beyond:
        return None
    share = consistent(prof, low is not None)
    if share < consistency:
        return None
    layers = len(prof.names)
    return {"ratio": med, "decay_per_layer": med ** (1.0 / (layers - 1)) if med > 0 else 0.0,
            "frac_steps": frac, "hit": hit, "layers_measured": layers, "consistency": share}


def grouped_trend(prof: Profile, low: float | None, high: float | None,
                  cfg: dict[str, float]) -> tuple[Profile, dict[str, Any]] | None:
    """The worst like-for-like group (by_role) whose depth trend passes, with its evidence."""
    best = None
    for group in by_role(prof, max(2, int(cfg["min_layers"]))):
        ev = depth_trend(group, low, high, cfg["persist"], cfg.get("consistency", 0.0))
        if ev is None:
            continue
        score = ev["ratio"] if low is not None else -ev["ratio"]
        if best is None or score < best[2]:
            best = (group, ev, score)
    return (best[0], best[1]) if best else None


def _affected(prof: Profile, factor: float) -> list[str]:
    """Layers whose median value is below ``factor`` times the last layer's (the ones starved)."""
    vals = prof.values[:: max(1, prof.values.shape[0] // 10_000)]  # a median needs no more
    med = nanmedian(vals, axis=0)
    last = med[-1]
    return [n for n, m in zip(prof.names[:-1], med[:-1], strict=True) if m < factor * last]


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    found = {}
    for label, whole in (("weight", weight_profile(run)), ("flow", flow_profile(run))):
        got = grouped_trend(whole, cfg["ratio"], None, cfg)
        if got is not None:
            found[label] = (*got, len(got[0].names) < len(whole.names))
    if not found:
        return []
    label = "weight" if "weight" in found else "flow"
    prof, ev, subset = found[label]
    ratio = min(e["ratio"] for _, e, _ in found.values())
    evidence: dict[str, Any] = {
        "ratio_first_last": found["weight"][1]["ratio"] if "weight" in found else None,
        "flow_ratio_first_last": found["flow"][1]["ratio"] if "flow" in found else None,
        "decay_per_layer": ev["decay_per_layer"],
        "frac_steps": ev["frac_steps"],
        "layers_measured": ev["layers_measured"],
        "consistency": ev["consistency"],
        "compared": _role_of(prof) if subset else "all layers",
    }
    sev = Severity.ERROR if ratio < cfg["error_ratio"] else Severity.WARNING
    layers = _affected(prof, cfg["ratio"] ** 0.5) or [prof.names[0]]
    what = "weight-gradient RMS" if label == "weight" else "gradient flowing into the module outputs"
    compared = evidence["compared"]
    among = ("" if compared == "all layers" else f" (comparing {compared} only)" if compared.startswith("the ")
             else f" (comparing {compared} across blocks)")
    msg = (f"Gradients vanish with depth{among}: the first layer's {what} is {ratio:.1e} times the last "
           f"layer's (x{ev['decay_per_layer']:.2f} per layer over {ev['layers_measured']} layers) on "
           f"{ev['frac_steps']:.0%} of steps; {prof.names[0]} hardly trains.")
    return [Finding("vanishing_gradient", sev, layers, stretch(run.steps, ev["hit"]), evidence, msg,
                    _remedy(run))]


def _role_of(prof: Profile) -> str:
    """What the compared layers share: their role in each block (``layer.#.attention.query``), or, in a
    flat stack whose names are bare indices, their module type ("the Linear layers")."""
    exact = {role(n) for n in prof.names}
    shared = exact.pop() if len(exact) == 1 else role(prof.names[0], loose=True)
    if set(shared.split(".")) <= {"#"}:
        types = set(prof.types or [])
        return f"the {types.pop()} layers" if len(types) == 1 else "all layers"
    return shared


def transformer(run: Run) -> bool:
    """A stack of attention blocks with LayerNorm (by module types and names)."""
    types = {r.module_type for r in run.rows}
    names = " ".join(r.name.lower() for r in run.rows)
    attn = any("Attention" in t or "Attn" in t for t in types) or "attn" in names or "attention" in names
    return attn and any(t in ("LayerNorm", "RMSNorm") or "LayerNorm" in t for t in types)


def _remedy(run: Run) -> str:
    if transformer(run):
        return ("In a transformer this is the Post-LN failure (Xiong et al. 2020, \"On Layer "
                "Normalization in the Transformer Architecture\"): with the LayerNorm after each "
                "residual add, the gradient reaching the lower blocks shrinks, and large early updates "
                "make it worse. Add a learning-rate warm-up (linear over the first ~5-10% of steps), "
                "move the LayerNorm before attention and the MLP (Pre-LN, norm_first=True in "
                "nn.TransformerEncoderLayer), and lower the peak learning rate.")
    types = sorted({r.module_type for r in run.rows_of("act") if r.module_type in BOUNDED})
    if types:
        return (f"The net uses {'/'.join(types)}, whose derivative is at most 0.25 (sigmoid) or 1 "
                "(tanh) and near 0 when saturated, so each layer multiplies the gradient down. "
                "Use a ReLU-family activation (LeakyReLU, ELU, GELU), add normalisation "
                "(BatchNorm/LayerNorm) or residual connections, and initialise with Xavier (tanh) or "
                "He (ReLU) init.")
    return ("Add residual connections or normalisation (BatchNorm/LayerNorm) between layers, use "
            "He init for ReLU-family layers (Xavier for tanh), and check that no layer scales its "
            "output down (tiny init, heavy dropout).")
