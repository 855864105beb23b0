"""Renderings of a run and its findings: the depth-ordered layer table, and text (rich), markdown and
JSON reports (the JSON follows the findings contract, schema 1: see ``report_json``)."""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.run.reader import Run

if TYPE_CHECKING:
    from gradscope.diagnose.findings import Finding


def layer_summary(run: Run) -> list[dict[str, Any]]:
    """One dict per parameter row in depth order: grad norm first/last/median, non-finite total."""
    gn = run.metric("param", "grad_norm")
    nf = run.metric("param", "grad_nonfinite")
    rows = run.rows_of("param")
    out = []
    from gradscope.diagnose._util import nanmedian

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


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:.3g}"


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

    table = Table(title=title or f"{run.path}: {run.num_steps} steps, scalars")
    for col in ("scalar", "logged", "first", "last", "median", "min", "max", "non-finite"):
        table.add_column(col, justify="left" if col == "scalar" else "right")
    for r in scalar_summary(run):
        table.add_row(r["name"], str(r["steps_logged"]), *(_fmt(r[k]) for k in ("first", "last", "median",
                                                                                "min", "max")),
                      str(r["nonfinite"]))
    return table


def loss_scale(run: Run) -> dict[str, Any] | None:
    """AMP loss-scale range {min, max, last, skipped} when the run recorded ``amp_scale``."""
    scale = run.scalars.get("amp_scale")
    if scale is None or not np.isfinite(scale).any():
        return None
    fin = np.flatnonzero(np.isfinite(scale))
    skipped = run.scalars.get("amp_skipped")
    n = int(np.nansum(skipped >= 0.5)) if skipped is not None else 0
    return {"min": float(np.nanmin(scale)), "max": float(np.nanmax(scale)), "last": float(scale[fin[-1]]),
            "skipped_steps": n}


def _scale_txt(s: dict[str, Any]) -> str:
    def p2(x: float) -> str:
        e = np.log2(x) if x > 0 else np.nan
        return f"2^{int(e)}" if np.isfinite(e) and e == int(e) else f"{x:.3g}"

    return (f"AMP loss scale {p2(s['min'])} .. {p2(s['max'])} (last {p2(s['last'])}), "
            f"{s['skipped_steps']} step{'s' if s['skipped_steps'] != 1 else ''} skipped by the GradScaler")


def _rows_txt(run: Run) -> str:
    if not run.rows and run.manifest.get("format") == "tensorboard":
        return f"scalars only ({', '.join(sorted(run.scalars))}), from a TensorBoard log"
    return f"{len(run.rows)} rows"


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


# -- findings reports -----------------------------------------------------------------------------
_ORDER = ("error", "warning", "info")
_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def counts(findings: list[Finding]) -> dict[str, int]:
    out = dict.fromkeys(_ORDER, 0)
    for f in findings:
        out[f.severity.value] += 1
    return out


def verdict(findings: list[Finding]) -> str:
    """One line: ``healthy``, or ``2 errors, 1 warning`` (infos are listed but never unhealthy)."""
    c = counts(findings)
    parts = [f"{c[s]} {s}{'' if c[s] == 1 else 's'}" for s in ("error", "warning") if c[s]]
    if not parts:
        return "healthy" + (f" ({c['info']} info)" if c["info"] else "")
    return ", ".join(parts) + (f", {c['info']} info" if c["info"] else "")


def report_json(run: Run, findings: list[Finding]) -> dict[str, Any]:
    """The findings contract (schema 1): {"schema", "run", "summary": {"steps", "rows"}, "findings"}."""
    from gradscope.diagnose.findings import FINDINGS_SCHEMA

    first = int(run.steps[0]) if run.num_steps else None
    last = int(run.steps[-1]) if run.num_steps else None
    return {
        "schema": FINDINGS_SCHEMA,
        "run": str(run.path),
        "summary": {"steps": run.num_steps, "rows": len(run.rows), "first_step": first, "last_step": last,
                    "verdict": verdict(findings), **counts(findings),
                    "source": "tensorboard" if run.manifest.get("format") == "tensorboard" else "gradscope",
                    **({"loss_scale": loss_scale(run)} if loss_scale(run) else {})},
        "findings": [f.to_json() for f in findings],
    }


def dumps(payload: Any) -> str:
    """Strict JSON (NaN/Inf were mapped to null by Finding.to_json; allow_nan=False proves it)."""
    return json.dumps(payload, indent=2, allow_nan=False)


def _steps_txt(f: Finding) -> str:
    if f.steps is None:
        return "-"
    a, b = f.steps
    return f"step {a}" if a == b else f"steps {a}-{b}"


def _layers_txt(f: Finding, limit: int = 6) -> str:
    shown = ", ".join(f.layers[:limit])
    return shown + (f" (+{len(f.layers) - limit} more)" if len(f.layers) > limit else "")


def render_text(run: Run, findings: list[Finding], console: Any, table: bool = True) -> None:
    """Verdict line, findings grouped by severity, then the depth-ordered layer table."""
    from rich.markup import escape

    c = counts(findings)
    style = "bold red" if c["error"] else "yellow" if c["warning"] else "bold green"
    console.print(f"[{style}]{escape(verdict(findings))}[/]  {escape(str(run.path))}: "
                  f"{run.num_steps} steps, {escape(_rows_txt(run))}", soft_wrap=True)
    scale = loss_scale(run)
    if scale:
        console.print(_scale_txt(scale))
    for sev in _ORDER:
        group = [f for f in findings if f.severity.value == sev]
        if not group:
            continue
        console.print(f"\n[{_STYLE[sev]}]{sev.upper()}S ({len(group)})[/]")
        for f in group:
            console.print(f"[{_STYLE[sev]}]●[/] [bold]{f.kind}[/] ({_steps_txt(f)})"
                          + (f" [dim]{escape(_layers_txt(f))}[/]" if f.layers else ""), soft_wrap=True)
            console.print(f"  {escape(f.message)}", soft_wrap=True)
            if f.origin:
                console.print(f"  origin: {escape(json.dumps(f.to_json()['origin']))}", soft_wrap=True)
            console.print(f"  [green]fix:[/] {escape(f.remedy)}", soft_wrap=True)
    if table:
        console.print()
        console.print(layer_table(run) if run.rows_of("param") or not run.scalars else scalar_table(run))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(run: Run, findings: list[Finding], table: bool = True) -> str:
    """The report as GitHub markdown: verdict, findings by severity, layer table."""
    lines = [f"# gradscope report: `{run.path}`", "",
             f"**Verdict: {verdict(findings)}** ({run.num_steps} steps, {_rows_txt(run)})", ""]
    scale = loss_scale(run)
    if scale:
        lines += [_scale_txt(scale) + ".", ""]
    for sev in _ORDER:
        group = [f for f in findings if f.severity.value == sev]
        if not group:
            continue
        lines += [f"## {sev.capitalize()}s ({len(group)})", ""]
        for f in group:
            lines.append(f"### `{f.kind}` ({_steps_txt(f)})")
            lines.append("")
            if f.layers:
                lines.append(f"Layers: {', '.join(f'`{n}`' for n in f.layers[:12])}"
                             + (f" and {len(f.layers) - 12} more" if len(f.layers) > 12 else ""))
                lines.append("")
            lines += [f.message, "", f"**Fix:** {f.remedy}", ""]
            if f.origin:
                lines += [f"Origin: `{json.dumps(f.to_json()['origin'])}`", ""]
            ev = f.to_json()["evidence"]
            lines.append("Evidence: " + ", ".join(f"{k} = {_num(v)}" for k, v in ev.items()))
            lines.append("")
    if table and not run.rows_of("param") and run.scalars:
        lines += ["## Scalars", "", "| scalar | logged | first | last | median | min | max | non-finite |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| `{_md(r['name'])}` | {r['steps_logged']} | "
                  + " | ".join(_fmt(r[k]) for k in ("first", "last", "median", "min", "max"))
                  + f" | {r['nonfinite']} |" for r in scalar_summary(run)]
        lines.append("")
    elif table:
        lines += ["## Gradient norm by depth", "",
                  "| depth | parameter | type | first | last | median | non-finite |",
                  "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in layer_summary(run):
            name = r["name"] + ("" if r["trainable"] else " (frozen)")
            depth = "-" if r["depth"] is None else r["depth"]
            lines.append(f"| {depth} | `{_md(name)}` | {r['module_type']} | {_fmt(r['first'])} "
                         f"| {_fmt(r['last'])} | {_fmt(r['median'])} | {r['nonfinite']} |")
        lines.append("")
    return "\n".join(lines)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)
