"""Renderings of a run for people: the depth-ordered layer table (rich), plus text/markdown/json."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gradscope.run.reader import Run


def _finite_or_nan(fn: Any, a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(fn(a)) if a.size else float("nan")


def layer_summary(run: Run) -> list[dict[str, Any]]:
    """One dict per parameter row in depth order: grad norm first/last/median, non-finite total."""
    gn = run.metric("param", "grad_norm")
    nf = run.metric("param", "grad_nonfinite")
    rows = run.rows_of("param")
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for c in run.depth_order("param"):
            col = gn[:, c]
            seen = np.flatnonzero(~np.isnan(col))
            out.append({
                "name": rows[c].name,
                "module_type": rows[c].module_type,
                "depth": rows[c].depth,
                "trainable": rows[c].trainable,
                "first": float(col[seen[0]]) if seen.size else float("nan"),
                "last": float(col[seen[-1]]) if seen.size else float("nan"),
                "median": _finite_or_nan(np.median, col),
                "nonfinite": int(np.nansum(nf[:, c])),
                "steps_with_grad": int(seen.size),
            })
    return out


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:.3g}"


def layer_table(run: Run, title: str | None = None) -> Any:
    """A rich Table of layer_summary(run)."""
    from rich.table import Table

    table = Table(title=title or f"{run.path}: {run.num_steps} steps, gradient norm by depth")
    for col, justify in (("depth", "right"), ("parameter", "left"), ("type", "left"), ("first", "right"),
                         ("last", "right"), ("median", "right"), ("non-finite", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in layer_summary(run):
        name = r["name"] + ("" if r["trainable"] else " (frozen)")
        table.add_row("-" if r["depth"] is None else str(r["depth"]), name, r["module_type"],
                      _fmt(r["first"]), _fmt(r["last"]), _fmt(r["median"]),
                      str(r["nonfinite"]) if r["nonfinite"] else "0")
    return table
