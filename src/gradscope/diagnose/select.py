"""A view of a Run restricted to a step range and to rows matching glob patterns."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence

import numpy as np

from gradscope.run.reader import Run


def parse_steps(text: str) -> tuple[int | None, int | None]:
    """``"A:B"`` (either side may be empty) -> (A, B): steps A <= s < B, like a Python slice."""
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError(f"--steps {text!r}: expected A:B (e.g. 100:500, 100: or :500)")
    try:
        a = int(lo) if lo.strip() else None
        b = int(hi) if hi.strip() else None
    except ValueError:
        raise ValueError(f"--steps {text!r}: A and B must be integers (e.g. 100:500)") from None
    if a is not None and b is not None and b <= a:
        raise ValueError(f"--steps {text!r}: B must be larger than A")
    return a, b


def select(run: Run, steps: tuple[int | None, int | None] | None = None,
           layers: Sequence[str] | None = None) -> Run:
    """Run with only steps in [A, B) and only rows whose name matches one of ``layers`` (globs)."""
    if steps is None and not layers:
        return run
    keep = np.ones(run.num_steps, bool)
    if steps is not None:
        a, b = steps
        if a is not None:
            keep &= run.steps >= a
        if b is not None:
            keep &= run.steps < b
    rows, metrics = list(run.rows), {}
    cols: dict[str, list[int]] = {}
    for kind in ("param", "act", "flow"):
        of = run.rows_of(kind)
        cols[kind] = [i for i, r in enumerate(of)
                      if not layers or any(fnmatch.fnmatchcase(r.name, p) for p in layers)]
    rows = [r for kind in ("param", "act", "flow")
            for i, r in enumerate(run.rows_of(kind)) if i in set(cols[kind])]
    for key, arr in run.metrics.items():
        kind = key.split("/")[0]
        metrics[key] = arr[keep][:, cols[kind]] if kind in cols else arr[keep]
    scalars = {k: v[keep] for k, v in run.scalars.items()}
    lo, hi = (int(run.steps[keep][0]), int(run.steps[keep][-1])) if keep.any() else (0, -1)
    events = [e for e in run.events if not isinstance(e.get("step"), int) or lo <= e["step"] <= hi]
    chosen = {"steps": None if steps is None else f"{'' if steps[0] is None else steps[0]}:"
                                                  f"{'' if steps[1] is None else steps[1]}",
              "layers": list(layers) if layers else None}
    manifest = {**run.manifest, "selection": chosen}  # what coverage() reports as not checked
    return dataclasses.replace(run, manifest=manifest, rows=rows, steps=run.steps[keep], metrics=metrics,
                               scalars=scalars, events=events, wall_time=run.wall_time[keep])


def empty_selection(full: Run, chosen: Run) -> str | None:
    """Why a selection leaves nothing to check (for a CLI error), or None when something is left."""
    sel = chosen.manifest.get("selection") or {}
    if full.num_steps and not chosen.num_steps and sel.get("steps"):
        return (f"--steps {sel['steps']} selects no recorded step of {full.path} (it has steps "
                f"{int(full.steps[0])}-{int(full.steps[-1])})")
    if full.rows and not chosen.rows and sel.get("layers"):
        names = ", ".join(r.name for r in full.rows[:4])
        return (f"--layers {' '.join(sel['layers'])} matches no row of {full.path}; its rows are named "
                f"like {names} (quote the glob: --layers 'encoder.*')")
    return None
