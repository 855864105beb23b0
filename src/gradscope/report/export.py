"""Export a stored run to TensorBoard event files: the same tags the live TensorBoardSink writes.

Works for runs recorded without TensorBoard. ``gradscope export RUN --tensorboard DIR`` writes
DIR/<run name>/, so several runs exported to one DIR show side by side in ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import format as fmt
from gradscope.run.reader import Run, RunError, load_run

CHUNK_STEPS = 1000  # steps per write, so a long run is never held twice in memory


def run_arrays(run: Run, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """The chunk arrays (``step``, ``kind/metric``, ``scalar/name``) of ``run``'s steps [start, stop);
    metrics never recorded anywhere in the run are left out, as a live chunk leaves them out."""
    sl = slice(start, stop)
    arrays: dict[str, np.ndarray] = {"step": run.steps[sl].astype(np.int64)}
    for key, arr in run.metrics.items():
        if arr.shape[1] and not np.isnan(arr).all():
            arrays[key] = arr[sl]
    for name, values in run.scalars.items():
        arrays[fmt.scalar_key(name)] = values[sl]
    started = (run.manifest.get("config") or {}).get("started")
    if run.wall_time is not None and np.isfinite(run.wall_time).any() and isinstance(started, (int, float)):
        arrays[fmt.scalar_key(fmt.WALL_TIME)] = (run.wall_time[sl] - started).astype(np.float32)
    return arrays


def export_tensorboard(run: Run | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                       histograms: bool = True, overwrite: bool = False) -> Path:
    """Write ``run`` (a Run or a run directory) as TensorBoard event files into ``out_dir``.

    Raises RunError when the run cannot be read or ``out_dir`` already holds event files (pass
    ``overwrite=True`` to replace them); MissingDependencyError when tensorboard is not installed.
    """
    from gradscope.sinks.tensorboard import TensorBoardSink

    if not isinstance(run, Run):
        run = load_run(run)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory: choose another --tensorboard DIR")
    old = [*out.glob("*tfevents*"), *out.glob("layers/*/*tfevents*")] if out.is_dir() else []
    if old and not overwrite:
        raise RunError(f"{out} already holds TensorBoard event files: choose another DIR, or pass "
                       "--overwrite to replace them")
    for file in old:
        file.unlink()
    sink = TensorBoardSink(out, histograms=histograms)
    sink.write_manifest(run.manifest)
    for start in range(0, run.num_steps, CHUNK_STEPS):
        sink.write_chunk(run_arrays(run, start, start + CHUNK_STEPS))
    if run.events:
        sink.write_events(run.events)
    sink.close(run=run)
    if sink.errors:
        raise RunError(f"could not write TensorBoard files to {out}: {sink.errors[0]}")
    return out


def export_runs(paths: list[Path], tb_dir: Path, **kwargs: Any) -> list[Path]:
    """Export each run directory to ``tb_dir/<run name>``; names that repeat get a ``-2``, ``-3`` suffix."""
    runs = [load_run(path) for path in paths]  # read everything first: bad input writes nothing
    names: list[str] = []
    for path in paths:
        base = Path(path).resolve().name or "run"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return [export_tensorboard(run, tb_dir / name, **kwargs) for run, name in zip(runs, names, strict=True)]
