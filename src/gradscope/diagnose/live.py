"""Live diagnosis: the offline detectors, run on the writer thread while the run is being recorded.

:class:`LiveDiagnosis` is a RunWriter sink; it never runs on the training thread. Per flush it costs
O(new steps): an exact check of the new chunk for the NaN/Inf the ``nonfinite`` detector counts. The
full ``diagnose(load_run(RUN))`` (O(steps)) runs

- at once when that check fires (until a ``nonfinite`` finding is out; then it is an ordinary flush);
- otherwise at most every ``max(MIN_SECONDS, cost / BUDGET)`` seconds, so that diagnosing takes at
  most BUDGET of the wall time however long the run grows, queued on the writer at most once;
- at close, on the complete run (the writer's last job): the final findings are exactly those of
  ``gradscope analyze RUN``.

It reads the run through the same reader as ``gradscope analyze``, so a live verdict is the verdict
on the run so far. A new finding (a kind not reported before about these layers, or a higher severity) goes to
the ``gradscope`` logger, to the run's events (kind ``finding``, shown in TensorBoard's text tab) and
to ``on_finding``; one that matches ``stop_on`` becomes :attr:`LiveDiagnosis.stop`, which the Scope
raises on the training thread as :class:`HealthError`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.diagnose.findings import Finding, Severity
from gradscope.diagnose.link import CAUSAL_ORDER

log = logging.getLogger("gradscope")

MIN_SECONDS = 5.0  # the shortest interval between two periodic diagnoses
BUDGET = 0.05  # the largest share of wall time periodic diagnosis may take
EVENT = "finding"  # event kind of a live finding in RUN/events.jsonl

# Every kind a detector reports: link.py orders them all (tests/diagnose/test_live_offline.py checks
# this against the detectors' source).
KINDS = frozenset(CAUSAL_ORDER)

StopRule = Callable[[Finding], bool]


class HealthError(RuntimeError):
    """Raised on the training thread by ``watch(..., stop_on=...)``: the run has a finding that makes
    training pointless. ``finding`` is it; ``layer``, ``phase``, ``origin_step`` say where it began,
    ``remedy`` what to do; ``step`` is the step at which training was stopped."""

    def __init__(self, finding: Finding, step: int) -> None:
        origin = finding.origin or {}
        self.finding, self.step = finding, step
        self.layer: str | None = origin.get("layer") or (finding.layers[0] if finding.layers else None)
        self.phase: str | None = origin.get("phase")
        self.origin_step: int | None = origin.get("step", finding.steps[0] if finding.steps else None)
        self.remedy = finding.remedy
        where = f" in {self.layer}" + (f" ({self.phase})" if self.phase else "") if self.layer else ""
        super().__init__(f"gradscope stopped training at step {step}: {finding.kind}{where} "
                         f"[{finding.severity.value}]. {finding.message} Fix: {finding.remedy}")


def stop_rule(stop_on: str | Iterable[str] | None) -> StopRule | None:
    """``stop_on`` as a predicate: "error"/"warning" (that severity or worse), finding kinds, or None."""
    if stop_on is None:
        return None
    if isinstance(stop_on, str):
        if stop_on not in ("error", "warning"):
            raise ValueError(f"watch(stop_on={stop_on!r}): use 'error', 'warning', a list of finding kinds "
                             f"(e.g. stop_on=[{stop_on!r}]) or None")
        least = Severity(stop_on).rank
        return lambda f: f.severity.rank >= least
    try:
        kinds = frozenset(stop_on)
    except TypeError:
        raise TypeError(f"watch(stop_on=...) takes 'error', 'warning', a list of finding kinds or None, "
                        f"got {type(stop_on).__name__}") from None
    unknown = sorted(k for k in kinds if k not in KINDS)
    if unknown or not kinds:
        raise ValueError(f"watch(stop_on={sorted(kinds)!r}): unknown finding kind(s) {unknown}; "
                         f"known: {sorted(KINDS)}")
    return lambda f: f.kind in kinds


def finding_from_json(d: Mapping[str, Any]) -> Finding:
    """A Finding back from its JSON (as another rank receives it)."""
    steps = d.get("steps")
    return Finding(d["kind"], Severity(d["severity"]), list(d.get("layers") or []),
                   None if steps is None else (int(steps[0]), int(steps[1])), dict(d.get("evidence") or {}),
                   d.get("message", ""), d.get("remedy", ""), origin=d.get("origin"))


def where(f: Finding) -> frozenset[str]:
    """The layers a finding is about (its origin layer too); empty for a finding about the whole run."""
    origin = (f.origin or {}).get("layer")
    return frozenset(f.layers) | ({origin} if origin else set())


def same(f: Finding, seen_kind: str, seen_where: frozenset[str]) -> bool:
    """``f`` is a finding already seen at an earlier flush: the same kind about the same or some of the
    same layers (a growing layer list is the same finding), or both about the whole run."""
    w = where(f)
    return f.kind == seen_kind and (bool(w & seen_where) or (not w and not seen_where))


class NonfiniteCheck:
    """Which new steps hold a NaN/Inf the ``nonfinite`` detector counts, chunk by chunk, exactly.

    Per step: a non-finite count > 0 in a param/act/flow row, an Inf global norm, or a non-finite loss,
    outside AMP-skipped steps. A NaN loss counts only from the first NaN on, and only when that first
    NaN (a missing loss is NaN too) is at step index 3 or later, as in ``nonfinite._loss_bad``; the
    index of that first NaN is the one piece of state carried from chunk to chunk.
    """

    def __init__(self) -> None:
        self.rows = 0  # steps seen so far
        self.first_nan_loss: int | None = None

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        n = arrays["step"].shape[0]
        bad = np.zeros(n, bool)
        with np.errstate(invalid="ignore"):
            for k in ("param/grad_nonfinite", "act/nonfinite", "flow/nonfinite"):
                a = arrays.get(k)
                if a is not None and a.size:
                    bad |= (a > 0).any(axis=1)
            g = arrays.get("scalar/grad_norm")
            if g is not None:
                bad |= np.isinf(g)
            loss = arrays.get("scalar/loss")
            nan = np.isnan(loss) if loss is not None else np.ones(n, bool)
            if self.first_nan_loss is None and nan.any():
                self.first_nan_loss = self.rows + int(np.argmax(nan))
            if loss is not None:
                bad |= np.isinf(loss)
                if self.first_nan_loss is not None and self.first_nan_loss >= 3:
                    bad |= nan & (self.rows + np.arange(n) >= self.first_nan_loss)
            skipped = arrays.get("scalar/amp_skipped")
            if skipped is not None:
                bad &= ~(skipped >= 0.5)
        self.rows += n
        return arrays["step"][bad]


def event(f: Finding, step: int) -> dict[str, Any]:
    """The run event of a live finding: ``{"step", "kind": "finding", "finding": <its kind>, ...}`` with
    the rest of the finding's JSON (severity, layers, steps, message, remedy, ...)."""
    body = f.to_json()
    for link_key in ("id", "caused_by", "consequences"):  # ids number one diagnosis, not the run's events
        body.pop(link_key, None)
    return {"step": step, "kind": EVENT, "finding": body.pop("kind"), **body}


def describe(f: Finding) -> str:
    """One log line: severity, kind, where, the message and the remedy."""
    origin = f.origin or {}
    at = origin.get("layer") or ", ".join(f.layers[:3]) + (" ..." if len(f.layers) > 3 else "")
    steps = "" if f.steps is None else f" steps {f.steps[0]}-{f.steps[1]}"
    return (f"gradscope: {f.severity.value} {f.kind}" + (f" in {at}" if at else "") + f"{steps}: "
            f"{f.message} Fix: {f.remedy}")


class LiveDiagnosis:
    """Diagnoses the run at ``path`` as it is written (a RunWriter sink; see the module docstring).

    ``bind(submit, emit, viewers)`` connects it to its writer: ``submit`` queues a job on the writer
    thread, ``emit`` writes events into the run (on the writer thread), and each viewer (a sink with
    ``write_findings(findings, step)``, e.g. TensorBoard) gets the whole list whenever it changes.
    """

    def __init__(self, path: str | Path, *, on_finding: Callable[[Finding], Any] | None = None,
                 stop_on: StopRule | None = None, config: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.on_finding, self.stop_on, self.config = on_finding, stop_on, config
        self.errors: list[str] = []
        self.stop: Finding | None = None  # the first finding matching stop_on
        self.diagnoses = 0  # full diagnoses so far (for tests and benchmarks)
        self.busy_seconds = 0.0  # time spent in them
        self._clock = clock
        self._submit: Callable[[Callable[[], None]], None] | None = None
        self._emit: Callable[[list[dict[str, Any]]], None] | None = None
        self._viewers: list[Any] = []
        self._lock = threading.Lock()
        self._findings: list[Finding] = []
        self._reported: list[list[Any]] = []  # [kind, layers (grown), highest severity rank] reported
        self._last_end = clock()  # the first periodic diagnosis comes MIN_SECONDS after the start
        self._interval = MIN_SECONDS
        self._periodic: threading.Thread | None = None  # the periodic diagnosis running now
        self._diagnosing = threading.Lock()  # one diagnosis at a time (writer or periodic thread)
        self._outbox: collections.deque[tuple[list[Finding], list[Finding], int]] = collections.deque()
        self._nonfinite = NonfiniteCheck()
        self._nonfinite_out = False  # a nonfinite finding is out: later NaN is no longer news
        self._fresh = True  # no fruitless urgent diagnosis yet
        self._urgent = False  # a chunk with NaN/Inf waits for its diagnosis
        self._last_step = -1
        self._prechecked: tuple[Mapping[str, np.ndarray], bool] | None = None
        self._closed = False

    def bind(self, submit: Callable[[Callable[[], None]], None],
             emit: Callable[[list[dict[str, Any]]], None], viewers: Iterable[Any] = ()) -> None:
        self._submit, self._emit = submit, emit
        self._viewers = [v for v in viewers if hasattr(v, "write_findings")]

    @property
    def findings(self) -> list[Finding]:
        """The findings of the latest diagnosis (after close: of the finished run)."""
        with self._lock:
            return list(self._findings)

    # -- sink protocol (writer thread) --------------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        pass

    def write_events(self, events: list[dict[str, Any]]) -> None:
        pass

    def check(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """True when the new chunk holds a NaN/Inf that calls for a diagnosis now (O(chunk)).

        Call it once per chunk, before ``write_chunk`` (the Scope does, to answer ``stop_on`` before
        the chunk is on disk); ``write_chunk`` calls it itself otherwise.
        """
        flagged = self._nonfinite(arrays).size > 0 and not self._nonfinite_out
        urgent = flagged and (self._fresh or self._due())  # after a fruitless one: rate-limited
        self._prechecked = (arrays, urgent)
        return urgent

    def write_chunk(self, arrays: Mapping[str, np.ndarray]) -> None:
        if arrays["step"].size:
            self._last_step = max(self._last_step, int(arrays["step"][-1]))
        pre, self._prechecked = self._prechecked, None
        urgent = pre[1] if pre is not None and pre[0] is arrays else self.check(arrays)
        if urgent:  # diagnose once the writer has put the chunk on disk (sinks hear of it first)
            self._urgent = True
            if self._submit is not None:
                self._submit(self.diagnose_urgent)
        elif self._due() and self._periodic is None and self._submit is not None:
            # Never two at once; on a thread of its own, so that the writer's queue (which a stop_on
            # flush waits for) never waits for a full diagnosis.
            self._periodic = threading.Thread(target=self._diagnose, kwargs={"inline": False},
                                              name="gradscope-diagnose", daemon=True)
            self._periodic.start()

    def diagnose_urgent(self) -> None:
        """The diagnosis a NaN/Inf chunk asked for, if not done yet (the Scope's stop_on flush runs it
        right after writing the chunk; otherwise a writer job queued behind the chunk does)."""
        if self._urgent and not self._closed:
            self._urgent = False
            self._diagnose()
            self._fresh = self._nonfinite_out  # False: the diagnosis failed, or the detector is off

    def finish(self) -> None:
        """Diagnose the complete run: the Scope queues this as the writer's last job at close."""
        if self._closed:
            return
        self._closed = True
        periodic = self._periodic
        if periodic is not None:
            periodic.join()
        self._deliver()  # what the periodic diagnosis found, before the final word
        self._diagnose()

    def close(self) -> None:
        """The RunWriter closes its sinks: diagnose the run if ``finish`` did not (a writer used alone)."""
        self.finish()

    # -- internals -------------------------------------------------------------------------------
    def _due(self) -> bool:
        return self._clock() - self._last_end >= self._interval

    def _diagnose(self, inline: bool = True) -> None:
        """Diagnose the run as it is on disk. ``inline``: on the writer thread, so the new findings are
        delivered at once; else (the periodic thread) they are handed to the writer thread."""
        from gradscope.diagnose import diagnose
        from gradscope.run.reader import load_run

        with self._diagnosing:
            start = self._clock()
            try:
                run = load_run(self.path)
                found = diagnose(run, self.config)
            except Exception as exc:  # a diagnosis must never stop the recording
                self._fail(f"diagnosing the run: {type(exc).__name__}: {exc}")
                return
            finally:
                self._last_end = self._clock()
                self.busy_seconds += self._last_end - start
                self._interval = max(MIN_SECONDS, (self._last_end - start) / BUDGET)
                if not inline:
                    self._periodic = None
            self.diagnoses += 1
            with self._lock:
                self._findings = found
            step = int(run.steps[-1]) if run.num_steps else self._last_step
            new = self._new(found)
            if new or self._closed:  # the final list always: the viewers' summary
                self._outbox.append((new, found, step))
        if inline or self._submit is None:
            self._deliver()
        elif new:
            self._submit(self._deliver)

    def _new(self, found: list[Finding]) -> list[Finding]:
        """The findings not reported before; the first matching ``stop_on`` becomes ``stop``."""
        new = []
        for f in found:
            self._nonfinite_out |= f.kind == "nonfinite"
            if f.kind != "exception" and self._is_new(f):  # the loop is raising it right now
                new.append(f)
        if self.stop is None and self.stop_on is not None:
            hits = [f for f in new if self.stop_on(f)]
            roots = [f for f in hits if getattr(f, "caused_by", None) is None] or hits
            if roots:
                self.stop = roots[0]  # most severe, earliest first (diagnose sorts them)
        return new

    def _deliver(self) -> None:
        """On the writer thread: log the new findings, write them into the run, hand them to the
        viewers and to ``on_finding``."""
        while self._outbox:
            new, found, step = self._outbox.popleft()
            for f in new:
                level = {Severity.ERROR: logging.ERROR, Severity.WARNING: logging.WARNING}.get(
                    f.severity, logging.INFO)
                log.log(level, describe(f))
            if new and self._emit is not None:
                self._guard("writing findings", lambda new=new, step=step: self._emit([event(f, step) for f in new]))
            for v in self._viewers:
                self._guard(f"{type(v).__name__}.write_findings",
                            lambda v=v, found=found, step=step: v.write_findings(found, step))
            if self.on_finding is not None:
                for f in new:
                    self._guard("on_finding", lambda f=f: self.on_finding(f))

    def _is_new(self, f: Finding) -> bool:
        """Not reported yet, or now more severe; the layers of a known finding grow silently."""
        hits = [r for r in self._reported if same(f, r[0], r[1])]
        for r in hits:
            r[1] |= where(f)
        if hits and f.severity.rank <= max(r[2] for r in hits):
            return False
        for r in hits:
            r[2] = f.severity.rank
        if not hits:
            self._reported.append([f.kind, where(f), f.severity.rank])
        return True

    def _guard(self, what: str, job: Callable[[], Any]) -> None:
        try:
            job()
        except Exception as exc:  # the user's callback or a disk error: report, never raise
            self._fail(f"{what}: {type(exc).__name__}: {exc}")

    def _fail(self, msg: str) -> None:
        self.errors.append(msg)
        if len(self.errors) == 1:
            log.warning("gradscope: live diagnosis failed (%s); recording goes on, and "
                        "`gradscope analyze %s` still works on the finished run", msg, self.path)
