"""The compacted form of a run: one uncompressed ``.npy`` per array under ``RUN/merged/``.

RUN/merged/index.json        {"format": "gradscope-merged", "version": 1, "steps": N,
                              "chunks_upto": K, "started": <manifest config.started>,
                              "arrays": {"step": "000.<token>.npy", "param/grad_norm": "001.<token>.npy", ...}}
RUN/merged/NNN.<token>.npy   [N] int64 steps, [N x rows] float32 per metric, [N] float32 per scalar

The index covers chunks 0 .. K-1 (their steps, in chunk order); chunks from K on are newer and are read
as usual. Chunks are never removed, so an older gradscope still reads the run, and a merged directory
that fails any check is ignored with a warning: the chunks are read instead. The index is renamed into
place only after every array it names is on disk (written and fsync'ed), so a crash at any moment leaves
either the previous index or the new one, each naming complete files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import npyfile

DIR = "merged"
INDEX = "index.json"
FORMAT = "gradscope-merged"
VERSION = 1
DATA_RE = re.compile(r"^\d{3,6}\.[0-9a-f]{8,32}\.npy$")
MAX_INDEX_BYTES = 1 << 20


@dataclass
class Merged:
    """A valid merged directory: ``steps`` rows of each array, covering chunks below ``upto``."""

    upto: int
    steps: int
    arrays: dict[str, np.ndarray]  # read-only memory maps (plain ndarray views of them)
    names: dict[str, str]  # array key -> file name


def read_index(run_dir: Path) -> dict[str, Any] | None:
    """The parsed index, None when the run has no merged directory; ValueError when it is corrupt."""
    path = run_dir / DIR / INDEX
    if not os.path.lexists(path):
        return None
    fd, size = npyfile.open_regular(path)
    try:
        if size > MAX_INDEX_BYTES:
            raise ValueError(f"is {size} bytes, larger than any index gradscope writes")
        raw = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError("is not valid JSON (nested too deeply)") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"is not a version-{VERSION} {FORMAT} index")
    steps, upto, arrays = index.get("steps"), index.get("chunks_upto"), index.get("arrays")
    if not (_nat(steps) and _nat(upto) and isinstance(arrays, dict) and "step" in arrays):
        raise ValueError("lacks steps, chunks_upto or arrays")
    for key, name in arrays.items():
        if not isinstance(key, str) or not isinstance(name, str) or not DATA_RE.match(name):
            raise ValueError(f"names an unexpected file {str(name)[:60]!r}")
    return index


def _nat(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 40


def _map(path: Path, steps: int) -> np.ndarray:
    """Memory-map one merged array after checking its header against its file size."""
    fd, size = npyfile.open_regular(path)  # no links, regular files only
    try:
        info = npyfile.read_npy_header(npyfile.Source(fd, size), 0, size)
        if info.offset + info.nbytes != size:
            raise ValueError(f"holds {size} bytes but its header declares {info.offset + info.nbytes}")
        if not info.shape or info.shape[0] != steps:
            raise ValueError(f"has shape {info.shape}, expected {steps} steps")
        if info.nbytes == 0:
            return np.zeros(info.shape, info.dtype)
        with open(fd, "rb", closefd=False) as f:
            mm = np.memmap(f, info.dtype, "r", info.offset, info.shape, "F" if info.fortran else "C")
    finally:
        os.close(fd)
    return np.asarray(mm)  # a plain, read-only ndarray over the mapping


def open_merged(run_dir: Path, started: Any) -> Merged | None:
    """Map the merged arrays of ``run_dir``; None when there are none. ValueError when any check fails:
    the caller then reads the chunks instead."""
    index = read_index(run_dir)
    if index is None:
        return None
    if index.get("started") != started:
        raise ValueError("belongs to an earlier run in this directory (its start time differs)")
    steps = index["steps"]
    arrays = {}
    for key, name in index["arrays"].items():
        try:
            arrays[key] = _map(run_dir / DIR / name, steps)
        except (OSError, ValueError) as exc:
            raise ValueError(f"array {key!r} ({name}) {exc}") from None
    return Merged(index["chunks_upto"], steps, arrays, dict(index["arrays"]))
