"""TensorBoardSink: mirrors a run into TensorBoard event files (RUN/tb/), on the writer thread.

Tags are grouped so the UI stays usable with hundreds of layers:

    global/<scalar>                every per-step scalar: grad_norm, loss, lr, clip_coef, amp_scale, ...
    global/grad_nonfinite          non-finite gradient elements over all watched parameters
    grad_norm/<depth:03d>.<name>   one per parameter (likewise update_ratio/, flow_norm/, act_std/,
                                   dead_frac/); the depth prefix sorts layers in forward order
    hist/log10_grad_norm           per step: the distribution of log10 per-layer gradient norms
    run/config, events/<kind>, summary/findings    text

A custom-scalars layout groups the per-layer series into one chart per block (a name prefix such as
``encoder.layer.3``). Each step becomes one event holding all of its values. The sink never raises:
errors are kept in ``errors`` and warned about once, and training goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# chunk array -> tag group of its per-row series
ROW_GROUPS = {
    "param/grad_norm": "grad_norm",
    "param/update_ratio": "update_ratio",
    "flow/norm": "flow_norm",
    "act/std": "act_std",
    "act/dead_frac": "dead_frac",
}
ROW_TAG = re.compile(r"^(" + "|".join(ROW_GROUPS.values()) + r")/(\d+|-+)\.(.+)$")
HIST_TAG = "hist/log10_grad_norm"
NONFINITE_TAG = "global/grad_nonfinite"
ALWAYS_WRITTEN = {"grad_norm"}  # scalars whose NaN means a non-finite gradient, not "not recorded"


def row_tag(group: str, name: str, depth: int | None) -> str:
    """``grad_norm/007.encoder.layer.1.output.dense.weight``; rows never run get ``---``."""
    return f"{group}/{'---' if depth is None else f'{depth:03d}'}.{name}"


def block_of(name: str, kind: str) -> str:
    """The block a row belongs to: the module path up to its first numeric part (``encoder.layer.3``),
    else the parent of the module (``bert.embeddings``), else the module itself (``classifier``)."""
    module = name.rpartition(".")[0] if kind == "param" else name
    parts = module.split(".") if module else []
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    if len(parts) >= 2:
        return ".".join(parts[:-1])
    return parts[0] if parts else "(root)"


class TensorBoardSink:
    """A RunWriter sink writing TensorBoard event files to ``log_dir`` (see the module docstring)."""

    def __init__(self, log_dir: str | os.PathLike[str], *, histograms: bool = True,
                 summary: bool = True) -> None:
        from gradscope._optional import require

        require("tensorboard", "TensorBoard logging")
        self.log_dir = Path(log_dir)
        self.histograms, self.summary = histograms, summary
        self.errors: list[str] = []
        self._writer: Any = None
        self._rows: dict[str, list[tuple[str, int | None]]] = {}  # kind -> (name, depth) in column order
        self._scalar_names: set[str] = set()
        self._groups_seen: set[str] = set()
        self._layout_key: Any = None
        self._config_written = False
        self._closed = False

    # -- sink protocol (writer thread) ----------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._guard("manifest", lambda: self._on_manifest(manifest))

    def write_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        self._guard("chunk", lambda: self._on_chunk(arrays))

    def write_events(self, events: list[dict[str, Any]]) -> None:
        self._guard("events", lambda: self._on_events(events))

    def close(self, run: Any = None) -> None:
        """Write the findings summary (from ``run``, else the run directory above ``log_dir``), flush."""
        if self._closed:
            return
        if self.summary:
            self._guard("summary", lambda: self._write_summary(run))
        self._closed = True
        if self._writer is not None:
            self._guard("close", self._writer.close)

    # -- internals --------------------------------------------------------------------------------
    def _guard(self, what: str, job: Callable[[], None]) -> None:
        if self._closed:
            return
        try:
            job()
        except Exception as exc:  # never raise into training: record, warn once, carry on
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            if len(self.errors) == 1:
                warnings.warn(f"gradscope's TensorBoard sink failed ({self.errors[0]}); the run directory "
                              f"is still written. Check {self.log_dir}.", RuntimeWarning, stacklevel=2)

    def _emit(self, step: int, values: list[Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if self._writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._writer = EventFileWriter(str(self.log_dir), max_queue_size=1000, flush_secs=10)
        summary = summary_pb2.Summary(value=values)
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def _on_manifest(self, manifest: dict[str, Any]) -> None:
        rows: dict[str, list[tuple[str, int | None]]] = {}
        for r in manifest.get("rows", []):
            depth = r.get("depth")
            rows.setdefault(r["kind"], []).append((r["name"], depth if isinstance(depth, int) else None))
        self._rows = rows
        if not self._config_written:
            self._config_written = True
            info = {**(manifest.get("config") or {}), **(manifest.get("environment") or {})}
            lines = ["| key | value |", "| --- | --- |"]
            lines += [f"| {k} | {json.dumps(v)} |" for k, v in info.items()]
            self._emit(0, [_text("run/config", "\n".join(lines))])

    def _on_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        steps = arrays["step"]
        scalars = {k[len("scalar/"):]: v for k, v in arrays.items() if k.startswith("scalar/")}
        self._scalar_names |= set(scalars)
        self._maybe_write_layout(arrays)
        series = [(f"global/{n}", v, n in ALWAYS_WRITTEN) for n, v in sorted(scalars.items())]
        nonfinite = arrays.get("param/grad_nonfinite")
        grad_bad = None
        if nonfinite is not None and nonfinite.shape[1]:
            grad_bad = np.nan_to_num(nonfinite) > 0
            counts = np.where(np.isnan(nonfinite).all(1), np.nan, np.nansum(nonfinite, 1))
            series.append((NONFINITE_TAG, counts, False))
        rowwise = []
        for key, group in ROW_GROUPS.items():
            arr = arrays.get(key)
            kind_rows = self._rows.get(key.split("/")[0], [])
            if arr is not None and arr.shape[1]:
                tags = [row_tag(group, n, d) for n, d in kind_rows[: arr.shape[1]]]
                rowwise.append((tags, arr, grad_bad if key == "param/grad_norm" else None))
        grads = arrays.get("param/grad_norm")
        from tensorboard.compat.proto.summary_pb2 import Summary

        value = Summary.Value
        for t, step in enumerate(steps.tolist()):
            values = [value(tag=tag, simple_value=float(v[t])) for tag, v, always in series
                      if always or not np.isnan(v[t])]
            for tags, arr, bad in rowwise:
                keep = ~np.isnan(arr[t, : len(tags)])
                if bad is not None:
                    keep |= bad[t, : len(tags)]
                cols = np.flatnonzero(keep)
                values += [value(tag=tags[c], simple_value=v)
                           for c, v in zip(cols.tolist(), arr[t, cols].tolist(), strict=True)]
            if self.histograms and grads is not None:
                g = grads[t]
                g = g[np.isfinite(g) & (g > 0)]
                if g.size:
                    values.append(_histogram(HIST_TAG, np.log10(g.astype(np.float64))))
            if values:
                self._emit(step, values)
        if self._writer is not None:
            self._writer.flush()

    def _maybe_write_layout(self, arrays: dict[str, np.ndarray]) -> None:
        self._groups_seen |= {key for key in ROW_GROUPS if key in arrays}
        present = [(key, group) for key, group in ROW_GROUPS.items() if key in self._groups_seen]
        key = (tuple(sorted(self._scalar_names)), tuple(present),
               tuple((k, tuple(v)) for k, v in sorted(self._rows.items())))
        if key == self._layout_key:
            return
        self._layout_key = key
        self._emit(0, [_layout_value(self._layout(present))])

    def _layout(self, present: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, list[str]]]]]:
        """[(category, [(chart title, [exact tags])])]: global scalars, then each group by block."""
        cats = [("global", [(n, [f"global/{n}"]) for n in sorted(self._scalar_names)])]
        for key, group in present:
            kind = key.split("/")[0]
            blocks: dict[str, list[tuple[int, str]]] = {}
            for name, depth in self._rows.get(kind, []):
                order = depth if depth is not None else 1 << 30
                blocks.setdefault(block_of(name, kind), []).append((order, row_tag(group, name, depth)))
            charts = sorted(blocks.items(), key=lambda kv: min(o for o, _ in kv[1]))
            cats.append((f"{group} by block", [(b, [t for _, t in tags]) for b, tags in charts]))
        return [c for c in cats if c[1]]

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            body = "\n".join(f"- **{k}**: `{json.dumps(v, default=str)}`" for k, v in ev.items())
            step = ev.get("step", 0)
            tag = f"events/{ev.get('kind', 'event')}"
            self._emit(step if isinstance(step, int) else 0, [_text(tag, body)])

    def _write_summary(self, run: Any) -> None:
        if run is None:
            from gradscope.run import format as fmt
            from gradscope.run.reader import load_run

            if not (self.log_dir.parent / fmt.MANIFEST).is_file():
                return
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = load_run(self.log_dir.parent)
        if run.num_steps == 0:
            return
        self._emit(int(run.steps[-1]), [_text("summary/findings", summary_markdown(run))])
        self._writer.flush()


def summary_markdown(run: Any) -> str:
    """Findings of ``run`` when gradscope.diagnose is available, else a short statistics summary."""
    lines = [f"**{run.num_steps} steps**, rows: "
             + ", ".join(f"{k} {len(run.rows_of(k))}" for k in ("param", "act", "flow"))]
    g = run.scalars.get("grad_norm")
    if g is not None and np.isfinite(g).any():
        f = g[np.isfinite(g)]
        lines.append(f"- global grad norm: min {f.min():.3g}, median {np.median(f):.3g}, max {f.max():.3g}")
        if not np.isfinite(g).all():
            lines.append(f"- first non-finite global grad norm at step {int(run.steps[~np.isfinite(g)][0])}")
    try:
        from gradscope.diagnose import diagnose  # type: ignore[attr-defined]
    except ImportError:
        return "\n".join(lines)
    diagnose = getattr(diagnose, "diagnose", diagnose)  # the function, or a module holding it
    try:
        findings = list(diagnose(run))
    except Exception as exc:  # a summary without findings beats no summary
        return "\n".join([*lines, f"- (findings unavailable: {type(exc).__name__}: {exc})"])
    lines.append(f"\n**{len(findings)} findings**" if findings else "\nno findings: the run looks healthy")
    for f in findings:
        sev, kind = getattr(f, "severity", ""), getattr(f, "kind", "")
        lines.append(f"- **{getattr(sev, 'value', sev)}** {kind}: {getattr(f, 'message', f)}")
    return "\n".join(lines)


# -- protos -----------------------------------------------------------------------------------------
def _histogram(tag: str, values: np.ndarray, bins: int = 30) -> Any:
    from tensorboard.compat.proto import summary_pb2

    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=bins if hi > lo else 1, range=(lo, hi if hi > lo else lo + 1))
    histo = summary_pb2.HistogramProto(
        min=lo, max=hi, num=float(values.size), sum=float(values.sum()),
        sum_squares=float(np.square(values).sum()),
        bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts],
    )
    return summary_pb2.Summary.Value(tag=tag, histo=histo)


def _string_tensor(data: bytes) -> Any:
    from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[data],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto())


def _text(tag: str, text: str) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import metadata

    return summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata("", ""),
                                     tensor=_string_tensor(text.encode("utf-8")))


def _layout_value(categories: list[tuple[str, list[tuple[str, list[str]]]]]) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=title, chart=[
            layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(
                tag=["^(?:" + "|".join(re.escape(t) for t in tags) + ")$"]))
            for chart, tags in charts
        ])
        for title, charts in categories
    ])
    return summary_pb2.Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG,
                                     metadata=metadata.create_summary_metadata(),
                                     tensor=_string_tensor(layout.SerializeToString()))
