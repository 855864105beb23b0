"""The run-directory format: schema version, row kinds, metric names and manifest (de)serialisation.

RUN/manifest.json   schema, rows, metrics, config, environment
RUN/chunks/NNNNNN.npz one file per flush: ``step`` [T] int64 and one [T x rows] float32 array per metric
RUN/events.jsonl    discrete events, one JSON object per line
RUN/merged/         written at close: one .npy per array over the chunks merged so far (merged.py);
                    a read cache of the chunks, which stay, so schema 1 is unchanged
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
CHUNK_SUFFIX = ".npz"
EVENTS = "events.jsonl"
TB_DIR = "tb"

KINDS = ("param", "act", "flow")
METRICS: dict[str, tuple[str, ...]] = {
    "param": ("grad_norm", "grad_max", "grad_nonfinite", "weight_norm", "update_ratio"),
    "act": ("mean", "std", "zero_frac", "sat_frac", "nonfinite", "dead_frac"),
    "flow": ("norm", "nonfinite"),
}
# Per-step scalars always present; users add their own with Scope.log().
SCALARS = ("grad_norm", "lr")
# Each step's host wall time when its optimizer step returned, in seconds since config["started"]
# (float32 like every scalar: ~10 ms resolution after a day). load_run gives Run.wall_time instead.
WALL_TIME = "_wall_time"

# Module types whose forward differs between train() and eval() (dropout, batch norm): the watch side
# counts those left in eval mode, the diagnosis names them.
MODE_TYPES = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
                        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
                        "LazyBatchNorm2d", "LazyBatchNorm3d"})

# Scalars gradscope records itself (and lr_group<N>): Scope.log() refuses these names.
RESERVED_SCALARS = {
    "grad_norm": "the pre-clip global gradient norm", "lr": "the learning rate",
    "clip_coef": "the clip coefficient", "clipped": "whether gradscope.clip clipped",
    "amp_scale": "the GradScaler's loss scale", "amp_skipped": "whether the GradScaler skipped the step",
    WALL_TIME: "gradscope's own per-step wall time",
}


def reserved_scalar(name: str) -> bool:
    """Whether ``name`` is a scalar gradscope records itself."""
    return name in RESERVED_SCALARS or (name.startswith("lr_group") and name[8:].isdigit())


def chunk_name(index: int) -> str:
    """File name of chunk ``index`` inside RUN/chunks/."""
    return f"{index:06d}{CHUNK_SUFFIX}"


def metric_key(kind: str, metric: str) -> str:
    """Array name inside a chunk, e.g. ``param/grad_norm``."""
    return f"{kind}/{metric}"


def scalar_key(name: str) -> str:
    return f"scalar/{name}"


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates from a non-UTF-8 file name or a JSON
    ``\\udcff`` escape) written as a backslash escape, so that every output can print it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # a file name's undecodable bytes: show them as \\xff
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Row:
    """One thing measured over steps: a parameter, a module's output, or the gradient into that output."""

    name: str
    kind: str
    module_type: str
    shape: list[int] = field(default_factory=list)
    depth: int | None = None
    trainable: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Row:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d.get("kind") not in KINDS:
            raise ValueError(f"malformed row entry {str(d)[:80]!r}")
        depth = d.get("depth")
        shape = d.get("shape") or []
        if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
            raise ValueError(f"row {d['name']!r} has a malformed shape {shape!r}")
        return cls(
            name=printable(d["name"]),
            kind=d["kind"],
            module_type=printable(str(d.get("module_type", ""))),
            shape=shape,
            depth=depth if isinstance(depth, int) else None,
            trainable=bool(d.get("trainable", True)),
        )


def environment() -> dict[str, Any]:
    """Where the run was recorded: versions, host platform, git commit of the working directory if any."""
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "pid": os.getpid(),
    }
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
        if out.returncode == 0:
            env["git_commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def make_manifest(rows: list[Row], config: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "format": "gradscope-run",
        "rows": [r.to_json() for r in rows],
        "metrics": {k: list(v) for k, v in METRICS.items()},
        "config": config,
        "environment": env,
    }
