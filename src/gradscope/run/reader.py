"""load_run: read a run directory (complete, still being written, or from a killed process) into a Run.

A torn last event line or an unreadable chunk is skipped with a warning and the rest is read. Nothing
here unpickles: chunks load with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import format as fmt

MAX_CHUNK_BYTES = 1 << 31  # a chunk larger than 2 GiB is not one gradscope wrote


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


def _warn(msgs: list[str], msg: str) -> None:
    msgs.append(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise RunError(f"{path} does not exist: pass the log_dir given to gradscope.watch(...)")
    if not path.is_dir():
        raise RunError(f"{path} is not a directory: pass a run directory written by gradscope.watch(...)")
    mpath = path / fmt.MANIFEST
    if not mpath.is_file():
        raise RunError(
            f"{path} has no {fmt.MANIFEST}: is this a gradscope run directory? "
            f"Create one with gradscope.watch(..., log_dir={str(path)!r})"
        )
    try:
        if mpath.stat().st_size > 64 << 20:
            raise RunError(f"{mpath} is larger than 64 MiB: not a gradscope manifest")
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{mpath} is corrupt ({exc}); the run cannot be read without it") from exc
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


def _read_chunk(file: Path) -> dict[str, np.ndarray]:
    if file.is_symlink():
        raise ValueError("is a symbolic link; gradscope never writes links")
    size = file.stat().st_size
    if size > MAX_CHUNK_BYTES:
        raise ValueError(f"is {size} bytes, larger than any chunk gradscope writes")
    out: dict[str, np.ndarray] = {}
    with np.load(file, allow_pickle=False) as z:
        for key in z.files:
            if key != "step" and not key.startswith(("param/", "act/", "flow/", "scalar/")):
                continue
            info = z.zip.getinfo(key + ".npy")
            if info.file_size > MAX_CHUNK_BYTES:
                raise ValueError(f"array {key!r} declares {info.file_size} bytes")
            out[key] = z[key]
    steps = out.get("step")
    if steps is None or steps.ndim != 1 or steps.dtype.kind not in "iu":
        raise ValueError("has no 1-D integer 'step' array")
    for key, arr in out.items():
        if key == "step":
            continue
        if arr.dtype.kind != "f":
            raise ValueError(f"array {key!r} has dtype {arr.dtype}, expected float")
        want_ndim = 1 if key.startswith("scalar/") else 2
        if arr.ndim != want_ndim or arr.shape[0] != steps.shape[0]:
            raise ValueError(f"array {key!r} has shape {arr.shape}, expected {steps.shape[0]} steps")
    return out


def _read_events(path: Path, msgs: list[str]) -> list[dict[str, Any]]:
    file = path / fmt.EVENTS
    if not file.is_file():
        return []
    events = []
    with open(file, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                _warn(msgs, f"{file}:{lineno}: skipped a torn or corrupt event line")
                continue
            if isinstance(ev, dict):
                events.append(ev)
    return events


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read the run at ``path``. Raises RunError when it is not a readable run."""
    path = Path(path)
    manifest = _read_manifest(path)
    msgs: list[str] = []
    try:
        rows = [fmt.Row.from_json(r) for r in manifest["rows"]]
    except ValueError as exc:
        raise RunError(f"{path / fmt.MANIFEST}: {exc}; the manifest is corrupt") from exc
    widths = {k: sum(r.kind == k for r in rows) for k in fmt.KINDS}
    chunk_dir = path / fmt.CHUNK_DIR
    files = sorted(chunk_dir.glob("[0-9]*" + fmt.CHUNK_SUFFIX)) if chunk_dir.is_dir() else []
    chunks: list[dict[str, np.ndarray]] = []
    for file in files:
        try:
            chunk = _read_chunk(file)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
            _warn(msgs, f"{file}: skipped an unreadable chunk ({exc})")
            continue
        bad = [
            k for k, a in chunk.items()
            if a.ndim == 2 and a.shape[1] > widths.get(k.split("/")[0], 0)
        ]
        if bad:
            _warn(msgs, f"{file}: skipped a chunk wider than the manifest's rows ({bad[0]})")
            continue
        chunks.append(chunk)

    steps = np.concatenate([c["step"].astype(np.int64) for c in chunks]) if chunks else np.zeros(0, np.int64)
    metrics: dict[str, np.ndarray] = {}
    for kind, names in fmt.METRICS.items():
        for name in names:
            key = fmt.metric_key(kind, name)
            parts = []
            for c in chunks:
                t = c["step"].shape[0]
                a = np.full((t, widths[kind]), np.nan, dtype=np.float32)
                if key in c:
                    a[:, : c[key].shape[1]] = c[key]
                parts.append(a)
            metrics[key] = np.concatenate(parts) if parts else np.zeros((0, widths[kind]), np.float32)
    scalar_names = sorted({k[len("scalar/"):] for c in chunks for k in c if k.startswith("scalar/")})
    scalars: dict[str, np.ndarray] = {}
    for name in scalar_names:
        key = fmt.scalar_key(name)
        scalars[name] = np.concatenate(
            [c[key].astype(np.float32) if key in c else np.full(c["step"].shape[0], np.nan, np.float32)
             for c in chunks]
        )
    events = _read_events(path, msgs)
    return Run(path, manifest, rows, steps, metrics, scalars, events, msgs)
