"""What the framework callbacks share: the findings summary they log at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
