"""load_run: read a run directory (complete, still being written, or from a killed process) into a Run.

A torn last event line or an unreadable chunk is skipped with a warning and the rest is read. Nothing
here unpickles: chunks load with ``allow_pickle=False``.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import chunks as chunks_mod
from gradscope.run import format as fmt
from gradscope.run import merged, npyfile


class RunError(ValueError):
    """A path is not a readable gradscope run; the message names the problem and the fix."""


@dataclass
class Run:
    """A recorded run: steps, rows, [steps x rows] float32 arrays per metric, per-step scalars, events."""

    path: Path
    manifest: dict[str, Any]
    rows: list[fmt.Row]
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]
    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Steps at which each scalar was logged, for runs read from a foreign TensorBoard log (where a NaN
    # may be a logged value); empty for gradscope runs, whose NaN means "not recorded".
    logged: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time: np.ndarray | None = None  # [steps] float64 host time (Unix seconds); NaN when not recorded

    def __post_init__(self) -> None:
        if self.wall_time is None:  # runs recorded before gradscope stored wall times, TensorBoard logs
            self.wall_time = np.full(self.steps.shape[0], np.nan)

    def __repr__(self) -> str:
        source = self.manifest.get("config", {}).get("source", "gradscope")
        kinds = ", ".join(f"{k}={len(self.rows_of(k))}" for k in ("param", "act", "flow") if self.rows_of(k))
        span = f"steps {int(self.steps[0])}-{int(self.steps[-1])}" if self.num_steps else "no steps"
        return (f"Run({str(self.path)!r}, {self.num_steps} steps ({span}), rows: {kinds or 'none'}, "
                f"scalars: {_names(sorted(self.scalars, key=_scalar_order))}, source={source})")

    def rows_of(self, kind: str) -> list[fmt.Row]:
        """Rows of one kind in column order of that kind's metric arrays."""
        return [r for r in self.rows if r.kind == kind]

    def metric(self, kind: str, name: str) -> np.ndarray:
        """The [steps x rows_of(kind)] array of one metric (NaN where not recorded)."""
        key = fmt.metric_key(kind, name)
        if key not in self.metrics:
            raise KeyError(f"metric {key!r} not in run; known: {sorted(self.metrics)}")
        return self.metrics[key]

    def depth_order(self, kind: str) -> list[int]:
        """Column indices of ``kind`` sorted by depth (forward order); rows never run come last."""
        rows = self.rows_of(kind)
        return sorted(range(len(rows)), key=lambda i: (rows[i].depth is None, rows[i].depth or 0, i))

    @property
    def num_steps(self) -> int:
        return int(self.steps.shape[0])


_FIRST = ("loss", "grad_norm", "lr")


def _scalar_order(name: str) -> tuple[int, str]:
    """The training loop's own scalars first, then the rest by name (gradscope's loop checks...)."""
    return (_FIRST.index(name) if name in _FIRST else len(_FIRST), name)


def _names(names: list[str], most: int = 6) -> str:
    if not names:
        return "none"
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _warn(msgs: list[str], msg: str) -> None:
    msgs.append(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RunError(f"{path} does not exist: pass the log_dir given to gradscope.watch(...)")
    if not path.is_dir():
        raise RunError(f"{path} is not a directory: pass a run directory written by gradscope.watch(...)")
    mpath = path / fmt.MANIFEST
    if not os.path.lexists(mpath):
        raise RunError(
            f"{path} has no {fmt.MANIFEST}: is this a gradscope run directory? "
            f"Create one with gradscope.watch(..., log_dir={str(path)!r})"
        )
    try:
        fd, size = npyfile.open_regular(mpath)
    except (OSError, ValueError) as exc:
        raise RunError(f"{mpath} cannot be read ({exc}): gradscope writes it as a regular file") from None
    try:
        if size > MAX_MANIFEST_BYTES:
            raise RunError(f"{mpath} is {size} bytes, larger than any manifest gradscope writes "
                           f"({MAX_MANIFEST_BYTES >> 20} MiB): not a gradscope manifest")
        manifest = json.loads(npyfile.pread_exact(fd, size, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{mpath} is corrupt ({exc}); the run cannot be read without it") from None
    except RecursionError:
        raise RunError(f"{mpath} is corrupt (nested too deeply); the run cannot be read without it") from None
    finally:
        os.close(fd)
    if not isinstance(manifest, dict) or manifest.get("format") != "gradscope-run":
        raise RunError(f"{mpath} is not a gradscope manifest (no 'format': 'gradscope-run')")
    schema = manifest.get("schema")
    if schema != fmt.SCHEMA_VERSION:
        raise RunError(
            f"{mpath} has schema {schema!r}; this gradscope reads schema {fmt.SCHEMA_VERSION}: "
            "upgrade gradscope or re-record the run"
        )
    if not isinstance(manifest.get("rows"), list):
        raise RunError(f"{mpath} has no list of rows: the manifest is corrupt")
    return manifest


MAX_MANIFEST_BYTES = 16 << 20
MAX_EVENTS_BYTES = 64 << 20  # read at most this much of events.jsonl ...
MAX_EVENT_LINES = 500_000  # ... and at most this many lines (a run writes a few events per step at most)
MAX_EVENT_LINE = 1 << 20


def _read_events(path: Path, msgs: list[str]) -> list[dict[str, Any]]:
    file = path / fmt.EVENTS
    if not os.path.lexists(file):
        return []
    try:
        fd, size = npyfile.open_regular(file)
    except (OSError, ValueError) as exc:
        _warn(msgs, f"{file}: skipped the events ({exc})")
        return []
    events: list[dict[str, Any]] = []
    skipped = corrupt = 0
    with open(fd, "rb") as f:
        for lineno in itertools.count(1):
            if f.tell() >= MAX_EVENTS_BYTES or lineno > MAX_EVENT_LINES:
                if f.read(1):
                    _warn(msgs, f"{file}: read only the first {lineno - 1} lines "
                                f"({f.tell() / 2**20:.1f} MiB); the rest is ignored")
                break
            line = f.readline(MAX_EVENT_LINE)
            if not line:
                break
            if not line.endswith(b"\n") and len(line) == MAX_EVENT_LINE:
                while (rest := f.readline(MAX_EVENT_LINE)) and not rest.endswith(b"\n"):
                    pass  # an overlong line: skipped whole
                corrupt += 1
                continue
            if not line.strip():
                continue
            try:
                ev = json.loads(line.decode("utf-8", errors="replace"))
            except (ValueError, RecursionError):
                corrupt += 1
                if corrupt == 1:
                    _warn(msgs, f"{file}:{lineno}: skipped a torn or corrupt event line")
                continue
            if isinstance(ev, dict) and isinstance(ev.get("kind"), str):
                events.append(ev)
            else:
                skipped += 1
    if corrupt > 1:
        _warn(msgs, f"{file}: skipped {corrupt} torn or corrupt event lines in all")
    if skipped:
        _warn(msgs, f"{file}: skipped {skipped} lines that are not gradscope events (no 'kind')")
    return events


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read the run at ``path``. Raises RunError when it is not a readable run.

    Merged arrays (``RUN/merged/``, written when the run closed) are memory-mapped; chunks newer than
    them, or all chunks when there are none, are read into arrays allocated once.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    msgs: list[str] = []
    try:
        rows = [fmt.Row.from_json(r) for r in manifest["rows"]]
    except ValueError as exc:
        raise RunError(f"{path / fmt.MANIFEST}: {exc}; the manifest is corrupt") from exc
    widths = {k: sum(r.kind == k for r in rows) for k in fmt.KINDS}
    tables = read_tables(path, manifest, widths, msgs)
    steps = tables.pop("step")
    metrics = {fmt.metric_key(k, n): tables.pop(fmt.metric_key(k, n)) for k, names in fmt.METRICS.items()
               for n in names}
    scalars = {k[len("scalar/"):]: v for k, v in tables.items() if k.startswith("scalar/")}
    wall = _wall_time(manifest, scalars)
    events = _read_events(path, msgs)
    return Run(path, manifest, rows, steps, metrics, scalars, events, msgs, wall_time=wall)


def _wall_time(manifest: dict[str, Any], scalars: dict[str, np.ndarray]) -> np.ndarray | None:
    """Each step's host wall time from the stored seconds since ``config.started`` (None if absent)."""
    rel = scalars.pop(fmt.WALL_TIME, None)
    started = _started(manifest)
    if rel is None or not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    return float(started) + rel.astype(np.float64)


def open_checked_merged(path: Path, manifest: dict[str, Any], widths: dict[str, int]) -> Any:
    """The run's merged arrays (or None), restricted to known keys and checked against ``widths``.

    Raises OSError/ValueError when they exist but do not fit; callers fall back to the chunks.
    """
    old = merged.open_merged(path, _started(manifest))
    if old is not None:
        old.arrays = {k: a for k, a in old.arrays.items() if chunks_mod.wanted(k)}
        chunks_mod.check({k: (a.shape, a.dtype) for k, a in old.arrays.items()}, widths)
    return old


def read_tables(path: Path, manifest: dict[str, Any], widths: dict[str, int],
                msgs: list[str]) -> dict[str, np.ndarray]:
    """Every array of the run: ``step``, each metric key (NaN where not recorded), ``scalar/*``."""
    try:
        old = open_checked_merged(path, manifest, widths)
    except (OSError, ValueError) as exc:
        _warn(msgs, f"{path / merged.DIR}: ignored ({exc}); reading the chunks instead")
        old = None
    upto = old.upto if old is not None else 0
    tail = _scan(path, widths, upto, msgs)
    merged_files = [path / merged.DIR / name for name in old.names.values()] if old is not None else []
    if old is not None and not tail:
        n = old.steps
        check_size(path, 12 * n + 4 * n * sum(len(fmt.METRICS[k]) * widths[k] for k in fmt.KINDS), merged_files)
        return _complete(old.arrays, widths)
    spec = chunks_mod.layout(tail, widths)
    head = 0 if old is None else old.steps
    if old is not None:
        spec = _with_head(spec, old.arrays, head, widths)
    check_size(path, spec_bytes(spec), merged_files + [c.path for c in tail])
    out = chunks_mod.allocate(spec)
    if old is not None:
        for key, arr in old.arrays.items():
            dest = out[key][:head]
            (dest[:, : arr.shape[1]] if arr.ndim == 2 else dest)[...] = arr
    failed = chunks_mod.fill(tail, out, head)
    if failed:
        bad = np.zeros(spec["step"][0][0], bool)
        r = head
        failed_paths = {c.path for c, _ in failed}
        for c in tail:
            bad[r:r + c.steps] = c.path in failed_paths
            r += c.steps
        for c, exc in failed:
            _warn(msgs, f"{c.path}: skipped an unreadable chunk ({exc})")
        out = {k: v[~bad] for k, v in out.items()}
    return out


MIN_READ_BYTES = 256 << 20  # a run may always unpack to this much in memory ...
READ_FACTOR = 8  # ... or to this many times the bytes its files hold on disk


def spec_bytes(spec: dict[str, Any]) -> int:
    """Bytes of the arrays a layout spec (key -> (shape, dtype, ...)) describes."""
    total = 0
    for shape, dtype, *_ in spec.values():
        n = np.dtype(dtype).itemsize
        for d in shape:
            n *= int(d)
        total += n
    return total


def _on_disk(file: Path) -> int:
    """Bytes ``file`` really holds: its size, or less for a sparse file (allocated blocks)."""
    try:
        st = os.stat(file, follow_symlinks=False)
    except OSError:
        return 0
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else min(st.st_size, blocks * 512)


def check_size(path: Path, needed: int, files: list[Path]) -> None:
    """Refuse a run whose arrays would take far more memory than its files hold on disk: headers that
    declare huge arrays in sparse or tiny files are damage (or an attack), never gradscope's output."""
    if needed <= MIN_READ_BYTES:
        return
    held = sum(_on_disk(f) for f in files)
    if needed > READ_FACTOR * held:
        raise RunError(
            f"{path}: its chunks declare {needed / 2**30:.1f} GiB of statistics but its files hold only "
            f"{held / 2**20:.1f} MiB of data (sparse or damaged files?): this is not a run gradscope wrote; "
            "re-record it, or remove the damaged chunks/ and merged/ files")


def _started(manifest: dict[str, Any]) -> Any:
    config = manifest.get("config")
    return config.get("started") if isinstance(config, dict) else None


def _scan(path: Path, widths: dict[str, int], upto: int, msgs: list[str]) -> list[chunks_mod.Chunk]:
    """Scan every chunk from index ``upto`` on; unreadable ones are skipped with a warning."""
    found = []
    for index, file in chunks_mod.list_chunks(path / fmt.CHUNK_DIR):
        if index < upto:
            continue
        try:
            found.append(chunks_mod.scan_chunk(file, index, widths))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
            _warn(msgs, f"{file}: skipped an unreadable chunk ({exc})")
    return found


def _with_head(spec: dict[str, Any], arrays: dict[str, np.ndarray], head: int,
               widths: dict[str, int]) -> dict[str, Any]:
    """The layout of merged arrays (``head`` steps) followed by the chunks' layout ``spec``."""
    out = {}
    for key in sorted(set(spec) | set(arrays)):
        shape, dtype, complete = spec.get(key, (None, np.dtype(np.float32), False))
        if shape is None:
            kind = key.split("/")[0]
            tail_n = spec["step"][0][0]
            shape = (tail_n, widths[kind]) if kind in widths else (tail_n,)
        a = arrays.get(key)
        full = a is not None and (a.ndim == 1 or a.shape[1] == shape[1])
        out[key] = ((head + shape[0],) + tuple(shape[1:]), dtype, complete and full)
    return out


def _complete(arrays: dict[str, np.ndarray], widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Merged arrays as the Run needs them: native dtypes, padded to the manifest's width, every
    metric present. Mapped arrays are used as they are, without a copy, when they already fit."""
    n = arrays["step"].shape[0]
    out = {"step": arrays["step"].astype(np.int64, copy=False)}
    for kind, names in fmt.METRICS.items():
        for name in names:
            key = fmt.metric_key(kind, name)
            a = arrays.get(key)
            if a is not None and a.shape[1] == widths[kind]:
                out[key] = a.astype(np.float32, copy=False)
            else:
                full = np.full((n, widths[kind]), np.nan, np.float32)
                if a is not None:
                    full[:, : a.shape[1]] = a
                out[key] = full
    for key, a in arrays.items():
        if key.startswith("scalar/"):
            out[key] = a.astype(np.float32, copy=False)
    return out
