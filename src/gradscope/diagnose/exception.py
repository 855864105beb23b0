"""exception: the training loop raised inside ``with gradscope.watch(...)``; the run stopped there.

Read from the ``exception`` event that Scope.close() records on the exception path
(``{"step", "kind": "exception", "type", "message", "traceback"}``). The report leads with it: what
the statistics say happened before the crash comes after. Cheap: one pass over the events. A
``HealthError`` (``watch(stop_on=...)`` stopping the run) is not a crash: the finding it carries is
among the findings already, so it is left to lead.
"""

from __future__ import annotations

from gradscope.diagnose.findings import Finding, Severity
from gradscope.run.reader import Run

NAME = "exception"
DEFAULTS: dict[str, float] = {"enabled": 1}


def detect(run: Run, cfg: dict[str, float]) -> list[Finding]:
    if not cfg["enabled"]:
        return []
    out = []
    for e in run.events:
        if e.get("kind") != "exception":
            continue
        if e.get("type") == "HealthError":
            continue  # watch(stop_on=...) stopped the run: the finding it stopped on is the headline
        step = e.get("step") if isinstance(e.get("step"), int) else None
        kind, text = str(e.get("type") or "Exception"), str(e.get("message") or "")
        tb = str(e.get("traceback") or "").strip()
        last = tb.splitlines()[-3:] if tb else []
        ev = {"type": kind, "message": text[:500], "step": step, "traceback_tail": "\n".join(last)}
        at = f" at step {step}" if step is not None else ""
        msg = (f"The run ended with {kind}{at}: {text[:300]}" if text else f"The run ended with {kind}{at}.")
        remedy = ("Fix the exception first (its traceback is in RUN/events.jsonl); the statistics "
                  f"recorded up to{at or ' the crash'} are still read and diagnosed below.")
        out.append(Finding("exception", Severity.ERROR, [], None if step is None else (step, step), ev, msg,
                           remedy))
    return out[:1]
