"""Finding and Severity: what a detector reports, in the shape the CLI's JSON follows (schema 2).

Schema 2 links findings: every finding has an ``id``; a root cause lists the ids of the findings it
explains in ``consequences``, and each of those names its root in ``caused_by`` (see ``link.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

FINDINGS_SCHEMA = 2


class Severity(str, Enum):
    """How bad a finding is. ``info`` never fails a gate; a healthy run has no warning or error."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, NaN/Inf to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class Finding:
    """One diagnosis: a kind, a severity, where (layers, [first, last] step), numbers, and what to do."""

    kind: str
    severity: Severity
    layers: list[str]
    steps: tuple[int, int] | None
    evidence: dict[str, Any]
    message: str
    remedy: str
    origin: dict[str, Any] | None = field(default=None)
    id: str = ""
    caused_by: str | None = None
    consequences: list[str] = field(default_factory=list)

    @property
    def is_root(self) -> bool:
        """Not explained by another finding (a root cause, or a finding standing on its own)."""
        return self.caused_by is None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity.value,
            "layers": list(self.layers),
            "steps": None if self.steps is None else [int(self.steps[0]), int(self.steps[1])],
            "evidence": _clean(self.evidence),
            "message": self.message,
            "remedy": self.remedy,
            "caused_by": self.caused_by,
            "consequences": list(self.consequences),
        }
        if self.origin is not None:
            d["origin"] = _clean(self.origin)
        return d


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; then by first step, then kind (stable, deterministic)."""
    return sorted(
        findings,
        key=lambda f: (-f.severity.rank, f.steps[0] if f.steps else -1, f.kind),
    )
