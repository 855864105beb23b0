"""What the framework callbacks share: the findings summary they log at the end of a run, and the
live findings they hand on while it trains."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LiveFindings:
    """``watch(on_finding=...)`` for a callback: keeps each live finding (handed over on gradscope's
    writer thread) until the training thread ``take``s it, and passes it on to the user's own."""

    def __init__(self, user: Callable[[Any], Any] | None = None) -> None:
        self.user = user
        self.seen: list[Any] = []
        self._new: collections.deque[Any] = collections.deque()

    def __call__(self, finding: Any) -> None:
        self.seen.append(finding)
        self._new.append(finding)
        if self.user is not None:
            self.user(finding)

    def take(self) -> list[Any]:
        out = []
        while self._new:
            out.append(self._new.popleft())
        return out


def findings_summary(log_dir: Path) -> tuple[dict[str, float], list[Any]]:
    """Diagnose the finished run: counts by severity as ``gradscope/<severity>`` metrics, and the findings."""
    from gradscope.diagnose import diagnose
    from gradscope.run.reader import load_run

    found = diagnose(load_run(log_dir))
    counts = {f"gradscope/{sev}": 0.0 for sev in ("error", "warning", "info")}
    for f in found:
        counts[f"gradscope/{f.severity.value}"] += 1.0
    return counts, found


def findings_text(found: list[Any], log_dir: Path) -> str:
    """Markdown lines, one per finding, then how to see the full report."""
    lines = [f"- **{f.severity.value}** `{f.kind}`: {f.message}" for f in found] or ["- no findings: healthy"]
    return "\n".join([*lines, "", f"full report: `gradscope analyze {log_dir}`"])
