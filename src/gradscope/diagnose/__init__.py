"""Diagnosis: turn a recorded Run into a list of Findings, one detector module per pathology.

    findings = diagnose(load_run("runs/exp1"))              # default thresholds
    findings = diagnose(run, {"vanishing": {"ratio": 1e-4}})  # or {"vanishing.ratio": 1e-4}
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.diagnose import (
    dead_units,
    exploding,
    frozen,
    nonfinite,
    saturation,
    spike,
    unused,
    update_ratio,
    vanishing,
)
from gradscope.diagnose._util import cached
from gradscope.diagnose.config import ConfigError, defaults, resolve
from gradscope.diagnose.findings import FINDINGS_SCHEMA, Finding, Severity, sort_findings
from gradscope.run.reader import Run

DETECTORS = (nonfinite, vanishing, exploding, spike, dead_units, saturation, unused, frozen, update_ratio)
DEFAULT_CONFIG = defaults(DETECTORS)

__all__ = ["DEFAULT_CONFIG", "DETECTORS", "FINDINGS_SCHEMA", "ConfigError", "Finding", "Severity",
           "diagnose", "resolve_config"]


def resolve_config(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Default thresholds with ``config`` applied; raises ConfigError on unknown keys or bad values."""
    return resolve(DEFAULT_CONFIG, config)


def diagnose(run: Run, config: Mapping[str, Any] | None = None) -> list[Finding]:
    """All findings for ``run``, most severe first. Empty, 1-step and all-NaN runs give no warnings."""
    cfg = resolve_config(config)
    found: list[Finding] = []
    with warnings.catch_warnings(), np.errstate(all="ignore"), cached(run):
        warnings.simplefilter("ignore", RuntimeWarning)
        for det in DETECTORS:
            found.extend(det.detect(run, cfg[det.NAME]))
    return sort_findings(found)
