"""Renderings of a run and its findings: text (rich), markdown and JSON reports (the JSON follows
the findings contract, schema 2: see ``report_json``). The headline is the root cause, with the
symptoms it explains under it; tables are in table.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.report.table import (
    fmt_num as _fmt,
)
from gradscope.report.table import (
    layer_summary,
    layer_table,
    loss_line,
    scalar_summary,
    scalar_table,
)
from gradscope.run.reader import Run

__all__ = ["counts", "dumps", "headline", "layer_summary", "layer_table", "loss_line", "loss_scale",
           "render_markdown", "render_text", "report_json", "scalar_summary", "scalar_table", "verdict"]

if TYPE_CHECKING:
    from gradscope.diagnose.findings import Finding


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


# -- findings reports -----------------------------------------------------------------------------
_ORDER = ("error", "warning", "info")
_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _roots(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.caused_by is None]


def counts(findings: list[Finding]) -> dict[str, int]:
    """Root findings per severity (symptoms linked to a root are counted with it, not again)."""
    out = dict.fromkeys(_ORDER, 0)
    for f in _roots(findings):
        out[f.severity.value] += 1
    return out


def verdict(findings: list[Finding], coverage: dict[str, Any] | None = None) -> str:
    """One line: ``healthy``, ``2 errors, 1 warning`` (infos never unhealthy), or ``nothing checked``
    when ``coverage`` says no check could run."""
    c = counts(findings)
    parts = [f"{c[s]} {s}{'' if c[s] == 1 else 's'}" for s in ("error", "warning") if c[s]]
    if not parts:
        if coverage is not None and not coverage["anything"]:
            return "nothing checked"
        return "healthy" + (f" ({c['info']} info)" if c["info"] else "")
    return ", ".join(parts) + (f", {c['info']} info" if c["info"] else "")


def headline(findings: list[Finding]) -> Finding | None:
    """The root cause the report leads with: the first root at warning or error."""
    return next((f for f in _roots(findings) if f.severity.rank >= 1), None)


def report_json(run: Run, findings: list[Finding]) -> dict[str, Any]:
    """The findings contract (schema 2): {"schema", "run", "summary", "findings"}; each finding has an
    ``id``, ``caused_by`` (the id of its root cause, or null) and ``consequences`` (ids)."""
    from gradscope.diagnose.coverage import coverage
    from gradscope.diagnose.findings import FINDINGS_SCHEMA

    cov = coverage(run)
    first = int(run.steps[0]) if run.num_steps else None
    last = int(run.steps[-1]) if run.num_steps else None
    head = headline(findings)
    return {
        "schema": FINDINGS_SCHEMA,
        "run": str(run.path),
        "summary": {"steps": run.num_steps, "rows": len(run.rows), "first_step": first, "last_step": last,
                    "verdict": verdict(findings, cov), **counts(findings),
                    "symptoms": sum(f.caused_by is not None for f in findings),
                    "headline": head.id if head is not None else None,
                    "checked": cov["checked"], "not_checked": cov["not_checked"],
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


def _layers_txt(f: Finding, limit: int = 4) -> str:
    from gradscope.report.table import abbreviate

    shown = ", ".join(abbreviate(n, 40) for n in f.layers[:limit])
    return shown + (f" (+{len(f.layers) - limit} more)" if len(f.layers) > limit else "")


def _first_sentence(text: str) -> str:
    cut = text.find(". ")
    return text if cut < 0 else text[:cut + 1]


def render_text(run: Run, findings: list[Finding], console: Any, table: bool = True) -> None:
    """Verdict line, the headline root cause, findings by severity (each root with its symptoms
    under it), what was and was not checked, the loss trend, then the layer table."""
    from rich.padding import Padding
    from rich.text import Text

    from gradscope.diagnose.coverage import coverage

    cov = coverage(run)
    c = counts(findings)
    style = "bold red" if c["error"] else "yellow" if c["warning"] else "bold green"
    if not cov["anything"]:
        style = "bold yellow"
    console.print(Text.assemble((verdict(findings, cov), style), f"  {run.num_steps} steps, {_rows_txt(run)}"))
    console.print(Text(f"run: {run.path}", style="dim"), soft_wrap=True)
    head = headline(findings)
    if head is not None:
        n = len(head.consequences)
        console.print(Text.assemble(("root cause: ", "bold"), (head.kind, _STYLE[head.severity.value]),
                                    f" ({_steps_txt(head)})"
                                    + (f", explains {n} other finding{'s' if n != 1 else ''}" if n else "")))
    loss = loss_line(run)
    if loss:
        console.print(loss)
    scale = loss_scale(run)
    if scale:
        console.print(_scale_txt(scale))
    by_id = {f.id: f for f in findings}
    for sev in _ORDER:
        group = [f for f in _roots(findings) if f.severity.value == sev]
        if not group:
            continue
        console.print(Text(f"\n{sev.upper()}S ({len(group)})", style=_STYLE[sev]))
        for f in group:
            console.print(Text.assemble(("● ", _STYLE[sev]), (f.kind, "bold"), f" ({_steps_txt(f)})"))
            if f.layers:
                console.print(Padding(Text(f"in {_layers_txt(f, 3)}", style="dim"), (0, 0, 0, 2)))
            console.print(Padding(Text(f.message), (0, 0, 0, 2)))
            if f.origin:
                console.print(Padding(Text(f"origin: {json.dumps(f.to_json()['origin'])}"), (0, 0, 0, 2)))
            console.print(Padding(Text.assemble(("fix: ", "green"), f.remedy), (0, 0, 0, 2)))
            symptoms = [by_id[i] for i in f.consequences if i in by_id]
            if symptoms:
                console.print(Padding(Text(f"symptoms it explains ({len(symptoms)}):", style="bold"),
                                      (0, 0, 0, 2)))
            for s in symptoms:
                line = Text.assemble(("- ", "dim"), (s.kind, "bold"), f" ({_steps_txt(s)}): ",
                                     _first_sentence(s.message))
                console.print(Padding(line, (0, 0, 0, 4)))
    if cov["checked"] or cov["not_checked"]:
        console.print()
    if cov["checked"]:
        console.print(Text.assemble(("checked: ", "dim"), "; ".join(cov["checked"])))
    if cov["not_checked"]:
        console.print(Text.assemble(("not checked: ", "yellow"), "; ".join(cov["not_checked"])))
    if table and run.num_steps:
        console.print()
        console.print(layer_table(run) if run.rows_of("param") or not run.scalars else scalar_table(run))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(run: Run, findings: list[Finding], table: bool = True) -> str:
    """The report as GitHub markdown: verdict, root cause, findings by severity (symptoms under
    their root), layer table."""
    from gradscope.diagnose.coverage import coverage

    cov = coverage(run)
    lines = [f"# gradscope report: `{run.path}`", "",
             f"**Verdict: {verdict(findings, cov)}** ({run.num_steps} steps, {_rows_txt(run)})", ""]
    head = headline(findings)
    if head is not None:
        lines += [f"**Root cause: `{head.kind}`** ({_steps_txt(head)})"
                  + (f", explains {len(head.consequences)} other finding(s)" if head.consequences else ""), ""]
    loss = loss_line(run)
    if loss:
        lines += [loss, ""]
    scale = loss_scale(run)
    if scale:
        lines += [_scale_txt(scale) + ".", ""]
    by_id = {f.id: f for f in findings}
    for sev in _ORDER:
        group = [f for f in _roots(findings) if f.severity.value == sev]
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
            symptoms = [by_id[i] for i in f.consequences if i in by_id]
            if symptoms:
                lines += [f"Symptoms it explains ({len(symptoms)}):", ""]
                lines += [f"- `{s.kind}` ({_steps_txt(s)}): {_md(_first_sentence(s.message))}" for s in symptoms]
                lines.append("")
    if cov["checked"]:
        lines += ["Checked: " + "; ".join(cov["checked"]) + ".", ""]
    if cov["not_checked"]:
        lines += ["Not checked: " + "; ".join(cov["not_checked"]) + ".", ""]
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
