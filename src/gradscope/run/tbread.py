"""Read a TensorBoard log directory written by another tool (a transformers Trainer, Lightning, a
hand-written SummaryWriter) into a :class:`~gradscope.run.reader.Run` holding its scalar series.

The run has no param/act/flow rows; its ``scalars`` are the log's scalar tags on the union of their
steps (NaN where a tag has no value at a step). Names are shortened so the detectors find them:
``train/grad_norm`` -> ``grad_norm``, ``train/loss`` -> ``loss``, ``train/learning_rate`` -> ``lr``,
and gradscope's own ``global/<name>`` -> ``<name>``. gradscope's per-layer tags are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import format as fmt
from gradscope.run.reader import Run, RunError

STRIP_PREFIXES = ("train/", "global/")
ALIASES = {"learning_rate": "lr"}


def _event_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that hold event files, sorted; the layer-group runs
    gradscope writes beside its own (``tb/layers/NN group``) belong to that run and are left out."""
    found = {p.parent for p in root.rglob("*tfevents*") if p.is_file()}
    return sorted(d for d in found if not (d.parent.name == "layers" and d.parent.parent in found))


def _pick_dir(path: Path, run: str | None) -> Path:
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise RunError(f"{path} {what}: pass a TensorBoard log directory (the one given to --logdir)")
    dirs = _event_dirs(path)
    if run is not None:
        target = (path / run).resolve()
        if target not in {d.resolve() for d in dirs}:
            names = [str(d.relative_to(path)) for d in dirs]
            raise RunError(f"{path} has no TensorBoard run {run!r}; runs there: {names}")
        return target
    if not dirs:
        raise RunError(f"{path} holds no TensorBoard event files (events.out.tfevents.*): "
                       "pass the logging_dir of the training run")
    if len(dirs) > 1:
        names = [str(d.relative_to(path)) or "." for d in dirs]
        raise RunError(f"{path} holds {len(dirs)} TensorBoard runs {names}: pick one with run=NAME "
                       "or pass its directory")
    return dirs[0]


def _short_name(tag: str, taken: set[str]) -> str:
    name = tag
    for prefix in STRIP_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    name = ALIASES.get(name, name)
    return tag if name in taken else name


def _series(acc: Any) -> dict[str, dict[int, float]]:
    """Scalar series by tag: legacy ``simple_value`` scalars and tensor scalars of the scalars plugin."""
    from tensorboard.util import tensor_util

    out: dict[str, dict[int, float]] = {}
    tags = acc.Tags()
    for tag in tags.get("scalars", []):
        out[tag] = {int(e.step): float(e.value) for e in acc.Scalars(tag)}  # later wins at a repeated step
    for tag in tags.get("tensors", []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        series = out.setdefault(tag, {})
        for e in acc.Tensors(tag):
            arr = tensor_util.make_ndarray(e.tensor_proto)
            if arr.size == 1 and arr.dtype.kind in "fiub":
                series[int(e.step)] = float(arr.reshape(()))
    return out


def load_tensorboard(path: str | os.PathLike[str], run: str | None = None) -> Run:
    """Read the scalars of the TensorBoard log at ``path`` into a Run (no rows; scalars only).

    ``path`` is a directory holding event files, or a log root with exactly one run below it;
    ``run`` names one run (a subdirectory, as TensorBoard lists it) of a root holding several.
    Raises RunError when there is nothing to read.
    """
    from gradscope._optional import require

    require("tensorboard", "Reading TensorBoard logs")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(path)
    directory = _pick_dir(root, run)
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    try:
        acc.Reload()
    except Exception as exc:  # a corrupt file surfaces as many exception types
        raise RunError(f"cannot read the TensorBoard events in {directory}: {exc}") from exc
    from gradscope.sinks.tensorboard import ROW_TAG  # gradscope's per-layer tags are not scalars

    series = {t: s for t, s in _series(acc).items() if s and not ROW_TAG.match(t)}
    if not series:
        raise RunError(f"{directory} holds no scalar series: is it a TensorBoard log of a training run?")
    steps = np.array(sorted({s for values in series.values() for s in values}), dtype=np.int64)
    index = {int(s): i for i, s in enumerate(steps)}
    scalars: dict[str, np.ndarray] = {}
    tags: dict[str, str] = {}
    for tag in sorted(series, key=lambda t: (not t.startswith(STRIP_PREFIXES), t)):
        arr = np.full(steps.shape[0], np.nan, dtype=np.float32)
        for step, value in series[tag].items():
            arr[index[step]] = value
        name = _short_name(tag, set(scalars))
        scalars[name], tags[name] = arr, tag
    manifest = {
        "schema": fmt.SCHEMA_VERSION, "format": "tensorboard", "rows": [],
        "metrics": {k: list(v) for k, v in fmt.METRICS.items()},
        "config": {"source": "tensorboard", "log_dir": str(directory), "tags": tags},
        "environment": {},
    }
    metrics = {fmt.metric_key(k, m): np.zeros((steps.shape[0], 0), np.float32)
               for k, names in fmt.METRICS.items() for m in names}
    return Run(directory, manifest, [], steps, metrics, scalars, [], [])
