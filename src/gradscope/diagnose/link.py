"""Linking: which findings are root causes and which are their symptoms.

A sick run shows one cause through many detectors: a learning rate far too high gives large updates,
exploding gradients, dead units, spikes and NaN; a dead layer starves every layer before it of
gradient. ``link`` attaches each symptom to the finding that explains it, by the rules below (each a
known mechanism, checked on the findings' own evidence and steps), and orders the result: the
crash first, then root causes (most severe, then most upstream in ``CAUSAL_ORDER``), each followed by
its consequences. Ids are ``F1``, ``F2``, ... in that order.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gradscope.diagnose.findings import Finding, Severity

# Upstream first: a finding earlier in this list is tried as a cause before a later one, and among
# roots of equal severity it is the headline.
CAUSAL_ORDER = (
    "exception", "stale_gradients", "not_in_optimizer", "eval_mode", "input_scale", "learning_rate",
    "frozen_parameters", "dead_units", "saturation", "rnn_gradient", "exploding_gradient",
    "vanishing_gradient", "nonfinite", "gradient_spike", "amp_overflow", "loss_spike", "update_ratio",
    "unused_parameter", "loss_plateau",
)
_RANK = {k: i for i, k in enumerate(CAUSAL_ORDER)}

Rule = Callable[[Finding, Finding], bool]


def _always(cause: Finding, symptom: Finding) -> bool:
    return True


def _first(f: Finding) -> int:
    return f.steps[0] if f.steps else 0


def _last(f: Finding) -> int:
    return f.steps[1] if f.steps else 0


def _not_before(cause: Finding, symptom: Finding) -> bool:
    """The symptom starts at or after the cause (one step of slack: a step's own statistics)."""
    return _first(symptom) >= _first(cause) - 1


def _update_side(side: str) -> Rule:
    def rule(cause: Finding, symptom: Finding) -> bool:
        return symptom.evidence.get("side") == side
    return rule


def _tiny_updates(cause: Finding, symptom: Finding) -> bool:
    """Updates far too small for the weights to move: the loss cannot improve."""
    return cause.evidence.get("side") == "low"


def _starved(cause: Finding, symptom: Finding) -> bool:
    """Parameters that got exactly zero gradient because every unit after them is dead."""
    starved = set(cause.evidence.get("starved_params") or [])
    return bool(starved) and set(symptom.layers) <= starved


def _frozen_warning(cause: Finding, symptom: Finding) -> bool:
    return cause.severity != Severity.INFO


def _same_layers(cause: Finding, symptom: Finding) -> bool:
    return bool(set(symptom.layers)) and set(symptom.layers) <= set(cause.layers)


def _explodes_first(cause: Finding, symptom: Finding) -> bool:
    """Gradients exploded before (or when) the values went non-finite: the NaN is the overflow."""
    return _first(cause) <= _first(symptom)


def _in_stretch(cause: Finding, symptom: Finding) -> bool:
    """The symptom falls inside the cause's stretch of steps (spikes while gradients explode)."""
    return _first(cause) - 1 <= _first(symptom) <= _last(cause) + 1


def _depth_explosion(cause: Finding, symptom: Finding) -> bool:
    """Gradients that grow with depth from the start come from the init, not from the step size:
    they make the updates large (under SGD the update is lr x gradient)."""
    depth = cause.evidence.get("weight_ratio_first_last") or cause.evidence.get("flow_ratio_first_last")
    return bool(depth) and _first(cause) <= _first(symptom) and not symptom.evidence.get("adaptive")


def _through_time_sgd(cause: Finding, symptom: Finding) -> bool:
    """Gradients exploding through time make plain-SGD updates large (lr x gradient): the big
    update ratio is their effect, not a learning rate chosen too high."""
    return cause.evidence.get("direction") == "exploding" and symptom.evidence.get("adaptive") is not True


def _after_a_dead_layer(cause: Finding, symptom: Finding) -> bool:
    """A layer whose units are all dead passes a constant on: the dead layers after it (deeper) follow."""
    d_cause, d_symptom = cause.evidence.get("depth"), symptom.evidence.get("depth")
    return (cause.evidence.get("dead_frac_median", 0.0) >= 0.999 and d_cause is not None
            and d_symptom is not None and d_symptom > d_cause)


def _saturated_after(cause: Finding, symptom: Finding) -> bool:
    """A recurrent module whose gradients exploded through time, then vanish through time: the
    explosion's update drove the cell into saturation."""
    return (cause.evidence.get("direction") == "exploding" and symptom.evidence.get("direction") == "vanishing"
            and set(symptom.layers) == set(cause.layers) and _first(symptom) >= _first(cause))


_DOWNSTREAM = ("exploding_gradient", "gradient_spike", "dead_units", "saturation", "update_ratio",
               "nonfinite", "loss_spike", "vanishing_gradient", "amp_overflow", "loss_plateau",
               "unused_parameter")

# cause kind -> [(symptom kind, condition)], tried in CAUSAL_ORDER of the cause.
RULES: dict[str, list[tuple[str, Rule]]] = {
    "stale_gradients": [(k, _always) for k in (*_DOWNSTREAM, "learning_rate")],
    "not_in_optimizer": [("loss_plateau", _always), ("update_ratio", _same_layers),
                         ("unused_parameter", _same_layers)],
    "input_scale": [(k, _always) for k in (*_DOWNSTREAM, "learning_rate")],
    "learning_rate": [(k, _not_before) for k in _DOWNSTREAM],
    "frozen_parameters": [("loss_plateau", _frozen_warning)],
    "dead_units": [("unused_parameter", _starved), ("vanishing_gradient", _not_before),
                   ("dead_units", _after_a_dead_layer),
                   ("loss_plateau", _always), ("update_ratio", _update_side("low"))],
    "saturation": [("vanishing_gradient", _always), ("loss_plateau", _always),
                   ("update_ratio", _update_side("low"))],
    "rnn_gradient": [("loss_plateau", _always), ("exploding_gradient", _always),
                     ("gradient_spike", _always), ("nonfinite", _explodes_first),
                     ("learning_rate", _through_time_sgd), ("vanishing_gradient", _always),
                     ("update_ratio", _always), ("rnn_gradient", _saturated_after)],
    "exploding_gradient": [("nonfinite", _explodes_first), ("gradient_spike", _in_stretch),
                           ("loss_spike", _in_stretch), ("amp_overflow", _not_before),
                           ("update_ratio", _update_side("high")), ("learning_rate", _depth_explosion),
                           ("dead_units", _not_before), ("saturation", _not_before)],
    "vanishing_gradient": [("loss_plateau", _always), ("update_ratio", _update_side("low"))],
    "nonfinite": [("gradient_spike", _not_before), ("loss_spike", _not_before),
                  ("amp_overflow", _not_before), ("exploding_gradient", _not_before)],
    "gradient_spike": [("loss_spike", _in_stretch)],
    "update_ratio": [("loss_plateau", _tiny_updates)],
}


def _root(parent: dict[int, int], i: int) -> int:
    while i in parent:
        i = parent[i]
    return i


# How a detector that usually finds the root cause ends its message; dropped where another finding
# explains it (e.g. an RNN explosion through time that makes even a normal learning rate too large).
ROOT_CLAIM = " Everything below follows from it."
_SYMPTOM_PREFIX = re.compile(r"^First fix F\d+ \([a-z_]+\): this follows from it\. Then: ")


def link(findings: list[Finding]) -> list[Finding]:
    """Set ids, ``caused_by`` and ``consequences``; return the findings, roots first, each root
    followed by its consequences. A symptom is tied to the most upstream cause that explains it."""
    parent: dict[int, int] = {}
    causes = sorted(range(len(findings)), key=lambda i: (_RANK.get(findings[i].kind, len(_RANK)),
                                                         _first(findings[i])))
    for ci in causes:
        cause = findings[ci]
        for kind, rule in RULES.get(cause.kind, []):
            for si, symptom in enumerate(findings):
                if si == ci or si in parent or symptom.kind != kind or _root(parent, ci) == si:
                    continue
                if rule(cause, symptom):
                    parent[si] = ci
    roots = [i for i in range(len(findings)) if i not in parent]
    roots.sort(key=lambda i: _headline_key(findings[i]))
    ordered: list[Finding] = []
    for r in roots:
        group = sorted((i for i in parent if _root(parent, i) == r),
                       key=lambda i: (-findings[i].severity.rank, _first(findings[i]), findings[i].kind))
        ordered.append(findings[r])
        ordered.extend(findings[i] for i in group)
    for n, f in enumerate(ordered, 1):
        f.id, f.caused_by, f.consequences = f"F{n}", None, []
    for si, ci in parent.items():
        root = findings[_root(parent, ci)]
        findings[si].caused_by = root.id
        root.consequences.append(findings[si].id)
        if findings[si].message.endswith(ROOT_CLAIM):  # a would-be root that another one explains
            findings[si].message = findings[si].message[:-len(ROOT_CLAIM)] + f" It follows from {root.id}."
        # A symptom's own fix can contradict its root's (tiny updates: "raise the lr", under a Post-LN
        # collapse whose fix lowers it): say which fix comes first.
        remedy = _SYMPTOM_PREFIX.sub("", findings[si].remedy)
        findings[si].remedy = f"First fix {root.id} ({root.kind}): this follows from it. Then: {remedy}"
    for f in ordered:
        f.consequences.sort(key=lambda i: int(i[1:]))
    return ordered


def _headline_key(f: Finding) -> tuple[int, int, int, int]:
    crashed = 0 if f.kind == "exception" else 1
    return (crashed, -f.severity.rank, _RANK.get(f.kind, len(_RANK)), _first(f))


def roots(findings: list[Finding]) -> list[Finding]:
    """The findings no other finding explains (the headline is the first)."""
    return [f for f in findings if f.caused_by is None]


def symptoms_of(root: Finding, findings: list[Finding]) -> list[Finding]:
    """The consequences of ``root``, in report order."""
    ids = set(root.consequences)
    return [f for f in findings if f.id in ids]
