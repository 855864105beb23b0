"""The layer and scalar tables of a report, sized for 80 columns: names abbreviated from the left
(the end of a path says what a parameter is), and models of 100+ parameters grouped by repeated
block (every transformer layer's query weight is one row: min/median/max over the blocks)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gradscope.run.reader import Run

# Past this many parameter rows the table folds repeated blocks into one row per role.
GROUP_AT = 100
NAME_WIDTH = 34
_SPARK = "▁▂▃▄▅▆▇█"


def abbreviate(name: str, width: int = NAME_WIDTH) -> str:
    """``name`` shortened from the left to ``width`` characters: path parts become their first
    letter, leftmost first (``bert.encoder.layer.#.attention.self.query.weight`` ->
    ``b.e.l.#.a.self.query.weight``), block numbers and the last part kept; if that is still too
    long, cut from the left and marked with ``…``."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    for k in range(len(parts) - 1):
        if not (parts[k].isdigit() or parts[k] == "#"):
            parts[k] = parts[k][:1]
        short = ".".join(parts)
        if len(short) <= width:
            return short
    short = ".".join(parts)
    return short if len(short) <= width else "…" + short[-(width - 1):]


def fmt_num(x: float) -> str:
    """Three significant digits in at most 8 characters (1.23e-05, 0.00123, 123)."""
    if x != x:
        return "-"
    text = f"{x:.3g}"
    return text if len(text) <= 8 else f"{x:.2e}"


def layer_summary(run: Run) -> list[dict[str, Any]]:
    """One dict per parameter row in depth order: grad norm first/last/median, non-finite total."""
    from gradscope.diagnose._util import nanmedian

    gn = run.metric("param", "grad_norm")
    nf = run.metric("param", "grad_nonfinite")
    rows = run.rows_of("param")
    out = []
    medians = nanmedian(gn, axis=0)  # one sort for all columns: fast on 100k-step runs
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
                "median": float(medians[c]),
                "nonfinite": int(np.nansum(nf[:, c])),
                "steps_with_grad": int(seen.size),
            })
    return out


def grouped_summary(run: Run) -> list[dict[str, Any]]:
    """layer_summary folded by role (``layer.#.q.weight``): one dict per role in order of its first
    block, with the number of blocks and the min/median/max over blocks of each block's median."""
    from gradscope.diagnose._util import role

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in layer_summary(run):
        groups.setdefault((role(r["name"]), r["module_type"]), []).append(r)
    out = []
    for (name, mtype), members in groups.items():
        med = np.array([m["median"] for m in members], np.float64)
        fin = med[np.isfinite(med)]
        stats = (float(fin.min()), float(np.median(fin)), float(fin.max())) if fin.size else (np.nan,) * 3
        out.append({"name": name, "module_type": mtype, "blocks": len(members),
                    "depth": members[0]["depth"], "min": stats[0], "median": stats[1], "max": stats[2],
                    "nonfinite": sum(m["nonfinite"] for m in members),
                    "frozen": sum(not m["trainable"] for m in members)})
    return out


def layer_table(run: Run, title: str | None = None, group: bool | None = None) -> Any:
    """A rich Table of the gradient norm by depth; grouped by block past GROUP_AT parameters."""
    from rich import box
    from rich.table import Table

    if group is None:
        group = len(run.rows_of("param")) >= GROUP_AT
    if group:
        return _grouped_table(run, title)
    table = Table(title=title or f"gradient norm by depth ({run.num_steps} steps)", box=box.SIMPLE_HEAD)
    for col, justify in (("depth", "right"), ("parameter", "left"), ("type", "left"), ("first", "right"),
                         ("last", "right"), ("median", "right"), ("NaN", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in layer_summary(run):
        name = abbreviate(r["name"] + ("" if r["trainable"] else " (frozen)"), 24)
        table.add_row("-" if r["depth"] is None else str(r["depth"]), name, r["module_type"][:8],
                      fmt_num(r["first"]), fmt_num(r["last"]), fmt_num(r["median"]), str(r["nonfinite"]))
    return table


def _grouped_table(run: Run, title: str | None) -> Any:
    from rich import box
    from rich.table import Table

    n = len(run.rows_of("param"))
    table = Table(title=title or f"gradient norm by role ({n} parameters, {run.num_steps} steps): "
                  "n blocks (# in the name), min/median/max over blocks of each block's median", box=box.SIMPLE_HEAD)
    for col, justify in (("parameter", "left"), ("n", "right"), ("min", "right"), ("median", "right"),
                         ("max", "right"), ("NaN", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in grouped_summary(run):
        name = r["name"] + (" (frozen)" if r["frozen"] == r["blocks"] else "")
        table.add_row(abbreviate(name, 30), str(r["blocks"]), fmt_num(r["min"]), fmt_num(r["median"]),
                      fmt_num(r["max"]), str(r["nonfinite"]))
    return table


def scalar_summary(run: Run) -> list[dict[str, Any]]:
    """One dict per per-step scalar: first/last/median/min/max of its finite values, non-finite count.

    A NaN of a TensorBoard-read run may only mean "not logged at that step", so ``nonfinite`` counts
    Inf only there."""
    out = []
    tb = run.manifest.get("format") == "tensorboard"
    for name in sorted(run.scalars):
        a = run.scalars[name].astype(np.float64)
        fin = a[np.isfinite(a)]
        bad = int(np.isinf(a).sum()) if tb else int((~np.isfinite(a)).sum())
        stats = ((float(fin[0]), float(fin[-1]), float(np.median(fin)), float(fin.min()), float(fin.max()))
                 if fin.size else (float("nan"),) * 5)
        out.append(dict(zip(("name", "first", "last", "median", "min", "max"), (name, *stats), strict=True))
                   | {"nonfinite": bad, "steps_logged": int(fin.size)})
    return out


def scalar_table(run: Run, title: str | None = None) -> Any:
    """A rich Table of scalar_summary(run) (runs without per-layer rows)."""
    from rich.table import Table

    table = Table(title=title or f"{run.num_steps} steps, scalars")
    for col in ("scalar", "logged", "first", "last", "median", "min", "max", "NaN"):
        table.add_column(col, justify="left" if col == "scalar" else "right", no_wrap=True)
    for r in scalar_summary(run):
        table.add_row(abbreviate(r["name"], 24), str(r["steps_logged"]),
                      *(fmt_num(r[k]) for k in ("first", "last", "median", "min", "max")), str(r["nonfinite"]))
    return table


def sparkline(values: np.ndarray, width: int = 40) -> str:
    """Block medians of ``values`` (finite ones) as a unicode sparkline of at most ``width`` bars."""
    from gradscope.diagnose._util import block_reduce

    v = values[np.isfinite(values)].astype(np.float64)
    if v.size == 0:
        return ""
    med = block_reduce(v[:, None], max(1, -(-v.size // width)))[:, 0]
    lo, hi = float(np.min(med)), float(np.max(med))
    if hi <= lo:
        return _SPARK[3] * med.size
    idx = np.clip(((med - lo) / (hi - lo) * (len(_SPARK) - 1)).round().astype(int), 0, len(_SPARK) - 1)
    return "".join(_SPARK[i] for i in idx)


def loss_line(run: Run) -> str | None:
    """``loss 0.693 -> 0.041 (-94%) over 300 steps ▇▅▃▂▁`` (start and end: medians of the first and
    last tenth), or None when no loss was logged."""
    loss = run.scalars.get("loss")
    if loss is None or not np.isfinite(loss).any():
        return None
    from gradscope.diagnose._util import loss_trend

    t = loss_trend(run)
    spark = sparkline(loss, 24)
    if t is None:
        fin = loss[np.isfinite(loss)]
        return f"loss {fin[0]:.4g} -> {fin[-1]:.4g} over {fin.size} steps {spark}"
    return f"loss {t.start:.4g} -> {t.end:.4g} ({-t.improvement:+.0%}) over {t.n} steps {spark}"
