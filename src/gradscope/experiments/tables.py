"""The comparison table: results grouped by configuration, mean ± std over seeds; rich, markdown, CSV.

The gradient ratio spans orders of magnitude, so its seeds are combined geometrically: the geometric
mean and the geometric standard deviation as a factor (``3e-7 ×/÷ 2`` is 1.5e-7 .. 6e-7).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradscope.experiments.grid import Config, varying

# (key, header, where the number lives in a result, how it is shown)
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("train_loss", "final loss", "final", "float"),
    ("test_acc", "test acc", "final", "percent"),
    ("steps_to_target", "steps→target", "metrics", "steps"),
    ("grad_ratio", "‖∇W₁‖/‖∇W_L‖", "metrics", "geometric"),
    ("dead_frac", "dead units", "metrics", "percent"),
    ("sat_frac", "saturated", "metrics", "percent"),
    ("spikes", "spikes", "metrics", "count"),
    ("clip_rate", "clip rate", "metrics", "percent"),
    ("findings", "findings", "metrics", "count"),
)
LEGEND = (
    "mean ± std over seeds. final loss: cross-entropy on the whole training set after the last step; "
    "test acc: held-out accuracy; steps→target: first step at which the 10-step mean training loss "
    "reaches the task's target ((k/n): only k of n seeds got there); ‖∇W₁‖/‖∇W_L‖: median over steps "
    "of the first weight matrix's gradient norm over the last one's (geometric mean ×/÷ geometric "
    "std); dead units: ReLU units with no positive output on the last batch; saturated: sigmoid/tanh "
    "outputs within 1 % of a bound, last step; spikes: gradient-spike steps found by diagnose; clip "
    "rate: steps on which the clipper scaled the gradients; findings: warnings and errors from "
    "diagnose."
)


def _value(result: dict[str, Any], key: str, where: str) -> float:
    v = result.get(where, {}).get(key)
    return math.nan if v is None else float(v)


def _stats(values: list[float], kind: str) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    out = {"n": float(arr.size), "reached": float(ok.size)}
    if kind == "geometric":
        ok = ok[ok > 0]
        logs = np.log(ok)
        out["mean"] = float(np.exp(logs.mean())) if ok.size else math.nan
        out["std"] = float(np.exp(logs.std(ddof=1))) if ok.size > 1 else (1.0 if ok.size else math.nan)
    else:
        out["mean"] = float(ok.mean()) if ok.size else math.nan
        out["std"] = float(ok.std(ddof=1)) if ok.size > 1 else (0.0 if ok.size else math.nan)
    return out


def aggregate(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (seeds pooled), in first-seen order: config fields and metric stats."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(Config.from_json(r["config"]).group, []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {"config": dict(key), "seeds": len(members),
                               "runs": [m["run"] for m in members]}
        for name, _, where, kind in METRICS:
            row[name] = _stats([_value(m, name, where) for m in members], kind)
        rows.append(row)
    return rows


def _fmt(s: dict[str, float], kind: str) -> str:
    m, sd = s["mean"], s["std"]
    if not math.isfinite(m):
        return "never" if kind == "steps" else "–"
    if kind == "percent":
        text = f"{100 * m:.1f}" + (f" ± {100 * sd:.1f}" if s["n"] > 1 else "") + " %"
    elif kind == "geometric":
        text = f"{m:.2g}" + (f" ×/÷ {sd:.2g}" if s["n"] > 1 else "")
    elif kind == "steps":
        text = f"{m:.0f}" + (f" ± {sd:.0f}" if s["reached"] > 1 else "")
    elif kind == "count":
        text = f"{m:.1f} ± {sd:.1f}" if s["n"] > 1 else f"{m:.0f}"
    else:
        text = f"{m:.3f}" + (f" ± {sd:.3f}" if s["n"] > 1 else "")
    if kind == "steps" and s["reached"] < s["n"]:
        text += f" ({s['reached']:.0f}/{s['n']:.0f})"
    return text


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Config axes worth a column: those that vary (at least the first axis)."""
    configs = [Config.from_json({**r["config"], "seed": 0}) for r in rows]
    axes = varying(configs)
    return axes or list(configs[0].axes[:1]) if configs else []


def cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the rich and markdown tables."""
    axes = columns(rows)
    header = axes + ["seeds"] + [h for _, h, _, _ in METRICS]
    body = []
    for r in rows:
        body.append([_fmt_axis(r["config"].get(a)) for a in axes] + [str(r["seeds"])]
                    + [_fmt(r[name], kind) for name, _, _, kind in METRICS])
    return header, body


def _fmt_axis(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def rich_table(rows: Sequence[dict[str, Any]], title: str = "") -> Any:
    """The table for a terminal: the varying axes joined into one label column to save width."""
    from rich.table import Table

    header, body = cells(rows)
    n_axes = len(header) - len(METRICS) - 1
    table = Table(title=title or None, caption="mean ± std over seeds; legend in table.md",
                  header_style="bold", pad_edge=False)
    table.add_column(" · ".join(header[:n_axes]) or "config")
    for h in header[n_axes:]:
        table.add_column(h, justify="right")
    for line in body:
        table.add_row(" · ".join(line[:n_axes]), *line[n_axes:])
    return table


def markdown(rows: Sequence[dict[str, Any]], title: str = "", notes: Sequence[str] = ()) -> str:
    header, body = cells(rows)
    n_axes = len(header) - len(METRICS) - 1
    lines = [f"# {title}", ""] if title else []
    lines += list(notes) + ([""] if notes else [])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(":---" if i < n_axes else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    lines += ["", LEGEND, ""]
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Every config field and, per metric, mean and std (plus seeds that reached the target)."""
    fields = list(rows[0]["config"]) if rows else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = fields + ["seeds"]
    for name, _, _, _ in METRICS:
        head += [f"{name}_mean", f"{name}_std"] + (["steps_to_target_reached"] if name == "steps_to_target"
                                                   else [])
    w.writerow(head)
    for r in rows:
        line: list[Any] = [r["config"].get(f) for f in fields] + [r["seeds"]]
        for name, _, _, _ in METRICS:
            s = r[name]
            line += [_num(s["mean"]), _num(s["std"])] + ([int(s["reached"])] if name == "steps_to_target"
                                                          else [])
        w.writerow(["" if v is None else v for v in line])
    return buf.getvalue()


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"
