"""One self-contained HTML page for one or more runs (``gradscope analyze RUN... --html report.html``).

The verdict, the findings with their remedies, the gradient-flow heatmap, the norm-by-depth profile,
global norm and loss with spikes marked, activation health and a block-grouped layer table; several
runs side by side (one column each, sections aligned). Figures are PNGs embedded as data URIs and the
style is inline: the page loads nothing from the network and works from a file or an e-mail.
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.run.groups import group_rows
from gradscope.run.reader import Run

if TYPE_CHECKING:
    from gradscope.diagnose.findings import Finding

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem;color:#1d1d1f;
background:#fafafa}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem;border-bottom:1px solid #ddd}
.grid{display:grid;gap:1rem;grid-template-columns:repeat(var(--n),minmax(0,1fr))}
.cell{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.7rem;min-width:0}
.run{font-weight:600;font-size:1rem;word-break:break-all}
.verdict{font-size:1.15rem;font-weight:700;padding:.35rem .6rem;border-radius:4px;display:inline-block}
.v-healthy{background:#e3f6e8;color:#17602e}.v-warning{background:#fff4d6;color:#7a5200}
.v-error{background:#fde2e1;color:#8c1d18}.v-none{background:#eee;color:#555}
.finding{border-left:4px solid #bbb;padding:.3rem .6rem;margin:.5rem 0}
.finding.error{border-color:#d93025}.finding.warning{border-color:#f2a600}.finding.info{border-color:#1a73e8}
.sev{font-size:.75rem;font-weight:700;text-transform:uppercase;margin-right:.4rem}
.error .sev{color:#d93025}.warning .sev{color:#a06b00}.info .sev{color:#1a73e8}
.kind{font-family:ui-monospace,monospace;font-size:.85rem}.remedy{margin-top:.25rem}
.remedy b{color:#17602e}.meta{color:#666;font-size:.8rem}.caused{margin-left:1.2rem}
img{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;font-size:.8rem}
th,td{text-align:left;padding:.2rem .4rem;border-bottom:1px solid #eee;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
details>summary{cursor:pointer}tr.bad td{background:#fde2e1}
.empty{color:#777;font-style:italic}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if x != 0 else "0"


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figures(run: Run, findings: list[Finding]) -> dict[str, str]:
    """Section name -> <img> (or a note) for each figure of the run."""
    from gradscope.report import draw, plots

    out: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if run.rows:
            heat = plots._heat(run)
            fig = draw.figure(10, max(3.0, min(10.0, 1.4 + 0.2 * min(heat.rows, draw.LABEL_ROWS))), "--html")
            draw.draw_heatmap(fig, fig.add_subplot(), heat, "Gradient flow: gradient norm by depth over steps")
            out["Gradient flow"] = _png(draw.png_bytes(fig), "gradient flow heatmap")
            fig = draw.figure(10, 5.2, "--html")
            draw.draw_profile(fig.add_subplot(), heat, "Gradient norm by depth")
            out["Norm by depth"] = _png(draw.png_bytes(fig), "gradient norm profile by depth")
        fig = plots.global_norm_figure(run, findings)
        out["Global norm and loss"] = _png(draw.png_bytes(fig), "global norm and loss")
        if run.rows_of("act"):
            out["Activation health"] = _png(draw.png_bytes(plots.activation_health_figure(run)), "activation health")
    return out


def _verdict(findings: list[Finding]) -> str:
    from gradscope.report.text import verdict

    text = verdict(findings)
    cls = ("v-error" if any(f.severity.value == "error" for f in findings) else
           "v-warning" if any(f.severity.value == "warning" for f in findings) else
           "v-healthy" if text.startswith("healthy") else "v-none")
    return f'<span class="verdict {cls}">{_esc(text)}</span>'


def _finding(f: Finding, nested: bool = False) -> str:
    sev = f.severity.value
    layers = ", ".join(f.layers[:6]) + (f" (+{len(f.layers) - 6} more)" if len(f.layers) > 6 else "")
    steps = f"steps {f.steps[0]}–{f.steps[1]}" if f.steps else ""
    meta = " · ".join(x for x in (steps, f"layers: {layers}" if layers else "") if x)
    return (f'<div class="finding {sev}{" caused" if nested else ""}"><span class="sev">{_esc(sev)}</span>'
            f'<span class="kind">{_esc(f.kind)}</span><div>{_esc(f.message)}</div>'
            + (f'<div class="remedy"><b>Remedy:</b> {_esc(f.remedy)}</div>' if f.remedy else "")
            + (f'<div class="meta">{_esc(meta)}</div>' if meta else "") + "</div>")


def _findings(findings: list[Finding]) -> str:
    if not findings:
        return '<p class="empty">No findings: no warning or error.</p>'
    by_id = {f.id: f for f in findings if f.id}
    parts = []
    for f in findings:
        if f.caused_by and f.caused_by in by_id:
            continue  # shown under its cause
        parts.append(_finding(f))
        parts += [_finding(c, nested=True) for c in findings if f.id and c.caused_by == f.id]
    return "".join(parts)


def _median(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def layer_table(run: Run) -> str:
    """Groups (block / layer / depth bucket) as rows; each opens to its parameters."""
    params = run.rows_of("param")
    if not params:
        return '<p class="empty">No per-layer rows (a scalars-only run).</p>'
    grouping = group_rows(run.rows)
    gn = run.metric("param", "grad_norm").astype(np.float64)
    ur = run.metric("param", "update_ratio").astype(np.float64)
    bad = np.nan_to_num(run.metric("param", "grad_nonfinite"), nan=0.0)
    dead = run.metric("act", "dead_frac").astype(np.float64)
    head = ('<tr><th>group</th><th class="n">params</th><th class="n">grad norm (median)</th>'
            '<th class="n">update ratio (median)</th><th class="n">dead units (max median)</th>'
            '<th class="n">non-finite</th></tr>')
    body = []
    for grp, cols, acts in zip(grouping.groups, grouping.of("param"), grouping.of("act"), strict=True):
        if not cols:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            norm = np.sqrt(np.nansum(np.square(gn[:, cols]), axis=1)) if gn.shape[0] else np.array([])
        seen = ~np.isnan(gn[:, cols]).all(axis=1) if gn.shape[0] else np.array([], bool)
        nf = int(bad[:, cols].sum())
        dead_g = max((_median(dead[:, c]) for c in acts), default=float("nan"))
        dead_g = dead_g if np.isfinite(dead_g) else float("nan")
        rows = "".join(
            f'<tr{" class=bad" if bad[:, c].sum() else ""}><td>{_esc(params[c].name)}</td>'
            f'<td>{_esc(params[c].module_type)}</td><td>{_esc("x".join(map(str, params[c].shape)))}</td>'
            f'<td class="n">{_num(_median(gn[:, c]))}</td><td class="n">{_num(_median(ur[:, c]))}</td>'
            f'<td class="n">{int(bad[:, c].sum())}</td></tr>' for c in cols)
        inner = ('<table><tr><th>parameter</th><th>type</th><th>shape</th><th class="n">grad norm</th>'
                 f'<th class="n">update ratio</th><th class="n">non-finite</th></tr>{rows}</table>')
        body.append(
            f'<tr{" class=bad" if nf else ""}><td><details><summary>{_esc(grp.label)}</summary>{inner}'
            f'</details></td><td class="n">{len(cols)}</td><td class="n">{_num(_median(norm[seen]))}</td>'
            f'<td class="n">{_num(_median(ur[:, cols].ravel()))}</td><td class="n">{_num(dead_g)}</td>'
            f'<td class="n">{nf}</td></tr>')
    by = {"block": "block", "layer": "layer", "depth": "depth bucket"}[grouping.by]
    return (f'<p class="meta">{len(body)} groups by {by}, in forward order; open one for its parameters. '
            'Norms are medians over steps; a group\'s norm is the L2 norm of all its gradients.</p>'
            f'<table class="layers">{head}{"".join(body)}</table>')


def _summary(run: Run) -> str:
    kinds = ", ".join(f"{len(run.rows_of(k))} {k}" for k in ("param", "act", "flow") if run.rows_of(k))
    span = f"steps {int(run.steps[0])}–{int(run.steps[-1])}" if run.num_steps else "no steps"
    wall = run.wall_time[np.isfinite(run.wall_time)] if run.wall_time is not None else np.array([])
    took = f", {wall[-1] - wall[0]:.0f} s of training" if wall.size > 1 else ""
    return f'<div class="meta">{run.num_steps} steps ({span}{took}); rows: {_esc(kinds or "none")}</div>'


SECTIONS = ("Verdict", "Findings and remedies", "Gradient flow", "Norm by depth", "Global norm and loss",
            "Activation health", "Layers by block")
FIGURES = SECTIONS[2:6]
NOT_RECORDED = '<p class="empty">not recorded in this run</p>'


def _column(run: Run, found: list[Finding]) -> dict[str, str]:
    """Section -> HTML of one run."""
    cells = {name: NOT_RECORDED for name in FIGURES}
    cells.update(_figures(run, found))
    cells["Verdict"] = _verdict(found) + _summary(run)
    cells["Findings and remedies"] = _findings(found)
    cells["Layers by block"] = layer_table(run)
    return cells


def render_html(results: list[tuple[Run, list[Finding]]], title: str = "gradscope report") -> str:
    """The page for ``results`` [(run, findings)]: one column per run, one row per section."""
    cols = [_column(run, found) for run, found in results]
    names = "".join(f"<div class=run>{_esc(run.path.name or run.path)}</div>" for run, _ in results)
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
           f'<meta name=viewport content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
           f'<body style="--n:{len(cols)}"><h1>{_esc(title)}</h1><div class="grid">{names}</div>']
    for name in SECTIONS:
        cells = [c[name] for c in cols]
        if name in FIGURES and all(x == NOT_RECORDED for x in cells):
            continue
        sid = name.lower().replace(" ", "-")
        out.append(f'<h2 id="{sid}">{_esc(name)}</h2><div class="grid">'
                   + "".join(f'<div class="cell">{x}</div>' for x in cells) + "</div>")
    out.append('<p class="meta">Written by gradscope. Self-contained: no network, no scripts.</p></body></html>')
    return "".join(out)


def write_html(results: list[tuple[Run, list[Finding]]], path: str | os.PathLike[str]) -> Path:
    """Write the page to ``path`` (its directory is created) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = ", ".join(r.path.name for r, _ in results)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render_html(results, f"gradscope report: {names}"), encoding="utf-8")
    os.replace(tmp, out)
    return out
