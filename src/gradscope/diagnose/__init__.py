"""Diagnosis: turn a recorded Run into a list of Findings, one detector module per pathology.

    findings = diagnose(load_run("runs/exp1"))              # default thresholds
    findings = diagnose(run, {"vanishing": {"ratio": 1e-4}})  # or {"vanishing.ratio": 1e-4}
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradscope.diagnose import (
    dead_units,
    exception,
    exploding,
    frozen,
    inputs,
    learning_rate,
    mode,
    nonfinite,
    optimizer,
    plateau,
    rnn,
    saturation,
    spike,
    stale,
    unused,
    update_ratio,
    vanishing,
)
from gradscope.diagnose._util import cached
from gradscope.diagnose.config import ConfigError, defaults, resolve
from gradscope.diagnose.coverage import coverage
from gradscope.diagnose.findings import FINDINGS_SCHEMA, Finding, Severity
from gradscope.diagnose.link import link
from gradscope.run.reader import Run

DETECTORS = (exception, stale, optimizer, mode, inputs, nonfinite, learning_rate, vanishing, exploding, rnn,
             spike, dead_units, saturation, unused, frozen, update_ratio, plateau)
DEFAULT_CONFIG = defaults(DETECTORS)
# For live use (#18, on the writer thread): these sort every column over all steps (the depth
# profiles of vanishing/exploding, spike's windowed medians and MADs, learning_rate's per-layer
# medians); on 100k steps x 500 rows each takes ~0.1-1 s, so run them every few flushes, not every
# flush. The rest are a few vectorised passes over scalars or one metric (milliseconds).
EXPENSIVE = ("vanishing", "exploding", "spike", "learning_rate", "dead_units", "saturation")

__all__ = ["DEFAULT_CONFIG", "DETECTORS", "EXPENSIVE", "FINDINGS_SCHEMA", "ConfigError", "Finding", "Severity",
           "coverage", "diagnose", "link", "resolve_config"]


def resolve_config(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Default thresholds with ``config`` applied; raises ConfigError on unknown keys or bad values."""
    return resolve(DEFAULT_CONFIG, config)


def diagnose(run: Run, config: Mapping[str, Any] | None = None) -> list[Finding]:
    """All findings for ``run``, linked (see link.py): the headline root cause first, each root
    followed by the symptoms it explains. Empty, 1-step and all-NaN runs give no warnings.

    A pure function of the Run (no state kept between calls), so it can run on a growing run.
    Cost on 100k steps x 500 rows: the depth profiles (vanishing, exploding, spike: one
    sort per column) and spike's windowed medians dominate; the rest are a few vectorised passes.
    """
    cfg = resolve_config(config)
    found: list[Finding] = []
    with warnings.catch_warnings(), np.errstate(all="ignore"), cached(run):
        warnings.simplefilter("ignore", RuntimeWarning)
        for det in DETECTORS:
            found.extend(det.detect(run, cfg[det.NAME]))
        return link(found)


class _CallableModule(types.ModuleType):
    """``gradscope.diagnose`` is both this package and the function: ``gradscope.diagnose(run)``
    works whichever Python resolved (importing a submodule binds the package on ``gradscope``)."""

    def __call__(self, run: Run, config: Mapping[str, Any] | None = None) -> list[Finding]:
        return diagnose(run, config)


sys.modules[__name__].__class__ = _CallableModule
