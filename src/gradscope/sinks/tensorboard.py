"""TensorBoardSink: mirrors a run into TensorBoard event files (RUN/tb/) as it is written.

Runs and tags, chosen so that vanishing with depth is one glance in a stock TensorBoard:

    tb/                            the run itself
        global/<scalar>            every per-step scalar: grad_norm, loss, lr, clip_coef, amp_scale, ...
        global/grad_nonfinite      non-finite gradient elements over all watched parameters
        hist/log10_grad_norm       per step: the distribution of log10 per-parameter gradient norms
        gradient_flow              image: gradient norm by depth over steps, and the profile by depth
        run/config, events/<kind>, findings    text (findings with their remedies)
    tb/layers/NN <group>/          one TensorBoard run per block (transformers), layer (short plain
                                   stacks) or depth bucket (deep stacks): see gradscope.run.groups
        depth/grad_norm            the group's gradient L2 norm; with depth/log10_grad_norm,
                                   depth/flow_norm, depth/act_std, depth/dead_frac, depth/update_ratio:
                                   one chart overlays every group, one colour each (like add_scalars)
        grad_norm/<role>           each row of the group (``attention.self.query.weight``), so that the
                                   chart of one role overlays it across blocks; likewise update_ratio/,
                                   flow_norm/, act_std/, dead_frac/ (up to MAX_ROW_TAGS rows per kind)

A custom-scalars layout puts the overlays first, then one chart per role. Every event carries the
step's own host wall time (``wall_time`` in the chunk) when the run recorded it. Nothing is re-read:
each chunk is written as it arrives. The sink never raises: errors are kept in ``errors`` and warned
about once, and training goes on.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run.format import WALL_TIME, Row
from gradscope.run.groups import Grouping, block_of, group_median, group_norm, group_rows
from gradscope.sinks import tb_files as pb

__all__ = ["TensorBoardSink", "block_of", "row_tag", "ROW_TAG"]

# chunk array -> (tag group, how rows of a group combine into the group's series)
ROW_GROUPS = {
    "param/grad_norm": ("grad_norm", "norm"),
    "param/update_ratio": ("update_ratio", "median"),
    "flow/norm": ("flow_norm", "norm"),
    "act/std": ("act_std", "median"),
    "act/dead_frac": ("dead_frac", "median"),
}
# per-layer tags of the gradscope versions before the layer runs (tbread skips them as not scalars)
ROW_TAG = re.compile(r"^(" + "|".join(g for g, _ in ROW_GROUPS.values()) + r")/(\d+|-+)\.(.+)$")
HIST_TAG = "hist/log10_grad_norm"
NONFINITE_TAG = "global/grad_nonfinite"
IMAGE_TAG = "gradient_flow"
LAYER_DIR = "layers"
MAX_ROW_TAGS = 1024  # per-row tags of one kind at most; past that the group series carry it
IMAGE_SECONDS = 60.0  # the image is redrawn at a flush at most this often (and once more at close);
# drawing takes ~0.3 s of the writer thread
HISTORY = 4 * 800  # steps of gradient history kept for the image (halved by pairs past that)
SUMMARY_CELLS = 250_000  # without live findings, close() diagnoses the run itself only up to steps x rows


def row_tag(group: str, role: str) -> str:
    """The tag of one row inside its layer run: ``grad_norm/attention.self.query.weight``."""
    return f"{group}/{role}"


class TensorBoardSink:
    """A RunWriter sink writing TensorBoard event files to ``log_dir`` (see the module docstring)."""

    def __init__(self, log_dir: str | Path, *, histograms: bool = True, summary: bool = True,
                 image: bool = True) -> None:
        from gradscope._optional import require

        require("tensorboard", "TensorBoard logging")
        self.log_dir = Path(log_dir)
        self.histograms, self.summary, self.image = histograms, summary, image
        self.errors: list[str] = []
        self._main = pb.EventFile(self.log_dir)
        self._layer_files: dict[str, pb.EventFile] = {}
        self._rows: list[Row] = []
        self._started: float | None = None
        self._grouping: Grouping | None = None
        self._scalar_names: set[str] = set()
        self._layout_key: Any = None
        self._config_written = False
        self._findings_written = False
        self._last_step = 0
        self._steps_seen = False
        self._history: tuple[Any, list[np.ndarray], list[np.ndarray]] | None = None
        self._drawn_at = -np.inf
        self._undrawn = False
        self._closed = False

    # -- sink protocol (writer thread) ----------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._guard("manifest", lambda: self._on_manifest(manifest))

    def write_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        self._guard("chunk", lambda: self._on_chunk(arrays))

    def write_events(self, events: list[dict[str, Any]]) -> None:
        self._guard("events", lambda: self._on_events(events))

    def write_findings(self, findings: list[Any], step: int | None = None) -> None:
        """Findings (with their remedies) as the ``findings`` text at ``step`` (default: the last)."""
        self._guard("findings", lambda: self._on_findings(findings, step))

    def close(self, run: Any = None) -> None:
        """Draw the last image, write the findings of ``run`` (or of a small run directory above
        ``log_dir``) unless findings were already given, and close every event file."""
        if self._closed:
            return
        if self._undrawn:
            self._guard("image", lambda: self._draw(force=True))
        if self.summary and not self._findings_written and (run is not None or self._steps_seen):
            self._guard("summary", lambda: self._write_summary(run))
        self._closed = True
        for f in [self._main, *self._layer_files.values()]:
            try:
                f.close()
            except Exception as exc:  # a full disk at close: record it, close the others
                self.errors.append(f"close: {type(exc).__name__}: {exc}")

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

    def _emit(self, step: int, values: list[Any], wall: float | None = None) -> None:
        """One event of the main run."""
        self._main.add(step, time.time() if wall is None else wall, values)

    def _layer_file(self, g: int) -> pb.EventFile:
        assert self._grouping is not None
        label = self._grouping.groups[g].label
        f = self._layer_files.get(label)
        if f is None:
            name = f"{g:02d} {pb.safe_dir(label)}"  # the number sorts runs (and colours) by depth
            f = self._layer_files[label] = pb.EventFile(self.log_dir / LAYER_DIR / name)
        return f

    def _on_manifest(self, manifest: dict[str, Any]) -> None:
        self._rows = [Row.from_json(r) for r in manifest.get("rows", [])]
        started = (manifest.get("config") or {}).get("started")
        self._started = float(started) if isinstance(started, (int, float)) else None
        self._grouping = group_rows(self._rows)
        if not self._config_written:
            self._config_written = True
            info = {**(manifest.get("config") or {}), **(manifest.get("environment") or {})}
            lines = ["| key | value |", "| --- | --- |"]
            lines += [f"| {k} | {json.dumps(v)} |" for k, v in info.items()]
            self._emit(0, [pb.text("run/config", "\n".join(lines))])

    def _on_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        steps = np.asarray(arrays["step"])
        scalars = {k[len("scalar/"):]: v for k, v in arrays.items() if k.startswith("scalar/")}
        wall = _wall_times(scalars.pop(WALL_TIME, None), self._started, len(steps))
        self._scalar_names |= set(scalars)
        grouping = self._grouping or group_rows(self._rows)
        self._maybe_write_layout(grouping)
        self._write_main(steps, wall, scalars, arrays)
        self._write_layers(steps, wall, arrays, grouping)
        self._main.flush()
        for f in self._layer_files.values():
            f.flush()
        if len(steps):
            self._last_step, self._steps_seen = int(steps[-1]), True
        if self.image and "param/grad_norm" in arrays and len(steps):
            self._remember(steps, arrays["param/grad_norm"], grouping)
            self._draw(force=False)

    def _write_main(self, steps: np.ndarray, wall: np.ndarray, scalars: dict[str, np.ndarray],
                    arrays: dict[str, np.ndarray]) -> None:
        series = [(f"global/{n}", np.asarray(v, np.float64), n == "grad_norm") for n, v in sorted(scalars.items())]
        nonfinite = arrays.get("param/grad_nonfinite")
        if nonfinite is not None and nonfinite.shape[1]:
            counts = np.where(np.isnan(nonfinite).all(1), np.nan, np.nansum(nonfinite, 1))
            series.append((NONFINITE_TAG, counts, False))
        grads = arrays.get("param/grad_norm")
        for t, step in enumerate(steps.tolist()):
            values = [pb.scalar(tag, float(v[t])) for tag, v, always in series if always or not np.isnan(v[t])]
            if self.histograms and grads is not None and grads.shape[1]:
                g = grads[t]
                g = g[np.isfinite(g) & (g > 0)]
                if g.size:
                    values.append(pb.histogram(HIST_TAG, np.log10(g.astype(np.float64))))
            if values:
                self._emit(step, values, wall[t])

    def _write_layers(self, steps: np.ndarray, wall: np.ndarray, arrays: dict[str, np.ndarray],
                      grouping: Grouping) -> None:
        """Per group: the group's series (``depth/<metric>``) and each of its rows (``<metric>/<role>``)."""
        per_group: dict[int, list[tuple[str, np.ndarray, np.ndarray | None]]] = {}
        for key, (tag, how) in ROW_GROUPS.items():
            arr = arrays.get(key)
            kind = key.split("/")[0]
            if arr is None or not arr.shape[1]:
                continue
            width = arr.shape[1]
            cols = [[c for c in cs if c < width] for cs in grouping.of(kind)]
            combined = group_norm(arr, cols) if how == "norm" else group_median(arr, cols)
            bad = None
            if key == "param/grad_norm" and "param/grad_nonfinite" in arrays:
                bad = np.nan_to_num(arrays["param/grad_nonfinite"]) > 0
            for g, cs in enumerate(cols):
                if not cs:
                    continue
                out = per_group.setdefault(g, [])
                out.append((f"depth/{tag}", combined[:, g], None))
                if tag == "grad_norm":
                    with np.errstate(divide="ignore", invalid="ignore"):
                        out.append(("depth/log10_grad_norm", np.log10(combined[:, g]), None))
                if width <= MAX_ROW_TAGS:
                    roles = grouping.roles[kind]
                    for c in cs:
                        out.append((row_tag(tag, roles[c]), arr[:, c], None if bad is None else bad[:, c]))
        for g, series in per_group.items():
            f = self._layer_file(g)
            for t, step in enumerate(steps.tolist()):
                values = [pb.scalar(tag, float(v[t])) for tag, v, b in series
                          if not np.isnan(v[t]) or (b is not None and b[t])]
                if values:
                    f.add(step, float(wall[t]), values)

    def _maybe_write_layout(self, grouping: Grouping) -> None:
        kinds = {k: len(grouping.roles[k]) for k in ("param", "act", "flow")}
        key = (tuple(sorted(self._scalar_names)), grouping.by, tuple(g.label for g in grouping.groups),
               tuple(sorted(kinds.items())))
        if key == self._layout_key:
            return
        self._layout_key = key
        self._emit(0, [pb.layout(self._layout(grouping))])

    def _layout(self, grouping: Grouping) -> list[tuple[str, list[tuple[str, str]]]]:
        """Overlays by depth, the global scalars, then one chart per role (a line per group)."""
        what = {"block": "block", "layer": "layer", "depth": "depth bucket"}[grouping.by]
        overlay = [(f"{tag} by {what}", pb.exact(f"depth/{tag}")) for tag, _ in ROW_GROUPS.values()]
        overlay.insert(1, (f"log10 grad_norm by {what}", pb.exact("depth/log10_grad_norm")))
        cats = [(f"by depth: one line per {what}", overlay),
                ("global", [(n, pb.exact(f"global/{n}")) for n in sorted(self._scalar_names)])]
        for key, (tag, _) in ROW_GROUPS.items():
            kind = key.split("/")[0]
            roles = list(dict.fromkeys(grouping.roles.get(kind, [])))
            if roles and len(grouping.roles[kind]) <= MAX_ROW_TAGS and grouping.by != "depth":
                cats.append((f"{tag} of each role, one line per {what}",
                             [(r, pb.exact(row_tag(tag, r))) for r in roles]))
        return [c for c in cats if c[1]]

    def _on_events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            body = "\n".join(f"- **{k}**: `{json.dumps(v, default=str)}`" for k, v in ev.items())
            step = ev.get("step", 0)
            tag = f"events/{ev.get('kind', 'event')}"
            self._emit(step if isinstance(step, int) else 0, [pb.text(tag, body)])
        self._main.flush()

    def _on_findings(self, findings: list[Any], step: int | None) -> None:
        self._emit(self._last_step if step is None else step, [pb.text("findings", findings_markdown(findings))])
        self._main.flush()
        self._findings_written = True

    def _write_summary(self, run: Any) -> None:
        """Findings of ``run``; without one, of the run directory above ``log_dir`` when it is small
        (a large run is not re-read at close: ``gradscope analyze RUN`` diagnoses it)."""
        if run is None:
            run = self._small_run()
            if run is None:
                note = ("Findings are not computed when the run closes for a run this size: run "
                        f"`gradscope analyze {self.log_dir.parent}`.")
                self._emit(self._last_step, [pb.text("findings", note)])
                return
        if run.num_steps == 0:
            return
        from gradscope.diagnose import diagnose

        self._on_findings(list(diagnose(run)), int(run.steps[-1]))

    def _small_run(self) -> Any:
        from gradscope.run import format as fmt
        from gradscope.run.reader import load_run

        parent = self.log_dir.parent
        if not (parent / fmt.MANIFEST).is_file() or not self._rows:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = load_run(parent)
        return run if run.num_steps * max(1, len(run.rows)) <= SUMMARY_CELLS else None

    # -- the gradient-flow image --------------------------------------------------------------------
    def _remember(self, steps: np.ndarray, grad_norm: np.ndarray, grouping: Grouping) -> None:
        """Keep the gradient norms for the image: per parameter, or per group past draw.HEAT_ROWS."""
        from gradscope.report.draw import HEAT_ROWS

        width = grad_norm.shape[1]
        per_param = width <= HEAT_ROWS
        key = (per_param, width if per_param else tuple(g.label for g in grouping.groups))
        values = grad_norm.astype(np.float32) if per_param else group_norm(
            grad_norm, [[c for c in cs if c < width] for cs in grouping.of("param")]).astype(np.float32)
        if self._history is None or self._history[0] != key:
            self._history = (key, [], [])
        _, s, v = self._history
        s.append(np.asarray(steps, np.int64))
        v.append(values)
        if sum(len(x) for x in s) > HISTORY:  # halve: every other step, the pair's mean
            all_s, all_v = np.concatenate(s), np.concatenate(v)
            n = len(all_s) // 2 * 2
            two = all_v[:n].reshape(n // 2, 2, -1)
            count = (~np.isnan(two)).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                pairs = np.where(count > 0, np.nansum(two, axis=1) / count, np.nan).astype(np.float32)
            s[:], v[:] = [all_s[:n:2], all_s[n:]], [pairs, all_v[n:]]
        self._undrawn = True

    def _draw(self, force: bool) -> None:
        from gradscope import _optional

        if self._history is None or not _optional.available("matplotlib"):
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < IMAGE_SECONDS:
            return
        from gradscope.report import draw

        (per_param, _), s, v = self._history
        steps, values = np.concatenate(s), np.concatenate(v)
        grouping = self._grouping or group_rows(self._rows)
        if per_param:
            heat = draw.param_heat(self._rows, steps, values, grouping)
        else:
            labels = [g.label for g in grouping.groups]
            keep = [i for i in range(values.shape[1]) if np.isfinite(values[:, i]).any()]
            heat = draw.Heat(steps, values[:, keep].astype(np.float64), [labels[i] for i in keep],
                             [(j, labels[i]) for j, i in enumerate(keep)], True)
        png, w, h = draw.flow_png(heat, self.log_dir.parent.name)
        self._emit(int(steps[-1]), [pb.image(IMAGE_TAG, png, w, h)])
        self._main.flush()
        self._drawn_at, self._undrawn = now, False


def _wall_times(rel: np.ndarray | None, started: float | None, n: int) -> np.ndarray:
    """Each step's recorded host wall time (``started`` + seconds since); now for steps (or runs
    recorded before wall times were kept) without one."""
    now = time.time()
    if rel is None or started is None:
        return np.full(n, now)
    w = started + np.asarray(rel, np.float64)
    return np.where(np.isfinite(w), w, now)


def findings_markdown(findings: list[Any]) -> str:
    """Findings as markdown for TensorBoard's text tab: severity, kind, layers, message and remedy."""
    if not findings:
        return "**No findings**: no warning or error; the run looks healthy by gradscope's checks."
    lines = [f"**{len(findings)} finding(s)**", ""]
    for f in findings:
        sev = getattr(getattr(f, "severity", ""), "value", "")
        layers = list(getattr(f, "layers", []) or [])
        where = f" — layers: `{', '.join(layers[:6])}`" + (f" (+{len(layers) - 6})" if len(layers) > 6 else "")
        lines.append(f"- **{sev}** `{getattr(f, 'kind', '')}`{where if layers else ''}")
        lines.append(f"  - {getattr(f, 'message', f)}")
        remedy = getattr(f, "remedy", "")
        if remedy:
            lines.append(f"  - **Remedy:** {remedy}")
    return "\n".join(lines)
