"""Read a TensorBoard log directory written by another tool (a transformers Trainer, Lightning, a
hand-written SummaryWriter) into a :class:`~gradscope.run.reader.Run` holding its scalar series.

The run has no param/act/flow rows; its ``scalars`` are the log's scalar tags on the union of their
steps, and ``run.logged[name]`` says at which steps each was logged: a NaN or Inf the log holds is a
value (a diverged loss), a step a tag did not log is not. Tags the detectors check are renamed to
their gradscope names (TAG_RULES, documented in README): HF's ``train/loss``, ``train/grad_norm``,
``train/learning_rate``; Lightning's ``train_loss`` (``_step``), ``grad_2.0_norm_total``, ``lr-Adam``;
hand-written ``loss``, ``Loss/train``, ``grad_norm``, ``lr``; gradscope's own ``global/<name>``.
Other tags keep their names; gradscope's per-layer tags are skipped.
"""

from __future__ import annotations

import collections
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import format as fmt
from gradscope.run.reader import Run, RunError

_TRAIN = r"(?:train(?:ing)?[/_.\-])?"  # an optional train/ train_ training. ... prefix
_TRAIN_END = r"(?:[/_.\-](?:train(?:ing)?|step))?"  # or a /train, _step (Lightning on_step) suffix
# (gradscope name, pattern matched against the whole tag, case-insensitive), first match wins.
TAG_RULES: tuple[tuple[str, str], ...] = (
    ("loss", _TRAIN + r"loss" + _TRAIN_END),
    ("grad_norm", _TRAIN + r"(?:grad(?:ient)?[_/.\-]?norm(?:[_/]total)?|grad_2\.0_norm[_/]total|total[_/]grad_norm)"
     + _TRAIN_END),
    ("lr", _TRAIN + r"(?:lr|learning[_\-]rate)(?:-[a-z]\w*)?" + _TRAIN_END),  # lr-Adam: LearningRateMonitor
)
CHECKED = ("loss", "grad_norm", "amp_skipped")  # names a detector reads; lr alone checks nothing
_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in TAG_RULES]


MAX_DEPTH = 4  # a log root, its runs, their sub-runs: deep enough for Trainer, Lightning, SummaryWriter
MAX_ENTRIES = 20_000  # directory entries looked at, at most (`analyze /` must not walk the disk)


def event_files(root: Path) -> list[Path]:
    """Event files (``*tfevents*``) under ``root``, breadth first, at most MAX_DEPTH levels down and
    MAX_ENTRIES entries looked at; links to directories are not followed. Raises RunError for an event
    file that is not a regular file (reading a FIFO would hang)."""
    found: list[Path] = []
    todo, seen = collections.deque([(root, 0)]), 0
    while todo:
        directory, depth = todo.popleft()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_ENTRIES:
                return sorted(found)
            if entry.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH:
                    todo.append((Path(entry.path), depth + 1))
            elif "tfevents" in entry.name:
                if not entry.is_file():
                    raise RunError(f"{entry.path} is not a regular file (a FIFO or a device?): gradscope reads "
                                   "only regular TensorBoard event files; remove it")
                found.append(Path(entry.path))
    return sorted(found)


def _event_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) that hold event files, sorted; the layer-group runs
    gradscope writes beside its own (``tb/layers/NN group``) belong to that run and are left out."""
    found = {p.parent for p in event_files(root)}
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
        raise RunError(f"{path} holds {len(dirs)} TensorBoard runs {names}: pass one of their directories, "
                       "or load_tensorboard(path, run=NAME) (gradscope analyze PATH analyses each)")
    return dirs[0]


def gradscope_name(tag: str) -> str | None:
    """The gradscope scalar a foreign tag is (``train_loss`` -> ``loss``), or None when none."""
    if tag.startswith("global/"):  # gradscope's own TensorBoard mirror
        return tag[len("global/"):]
    for name, pattern in _COMPILED:
        if pattern.fullmatch(tag):
            return name
    return None


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
    logged: dict[str, np.ndarray] = {}
    tags: dict[str, str] = {}
    named = {t: gradscope_name(t) for t in series}
    # recognised tags first (in rule order), so each gradscope name goes to its best tag
    order = sorted(series, key=lambda t: (named[t] is None, _rank(t), t))
    for tag in order:
        arr = np.full(steps.shape[0], np.nan, dtype=np.float32)
        mask = np.zeros(steps.shape[0], dtype=bool)
        for step, value in series[tag].items():
            arr[index[step]] = value
            mask[index[step]] = True
        name = named[tag] if named[tag] is not None and named[tag] not in scalars else tag
        scalars[name], logged[name], tags[name] = arr, mask, tag
    recognised = {n: tags[n] for n in scalars if n in CHECKED or n.startswith("amp_")}
    manifest = {
        "schema": fmt.SCHEMA_VERSION, "format": "tensorboard", "rows": [],
        "metrics": {k: list(v) for k, v in fmt.METRICS.items()},
        "config": {"source": "tensorboard", "log_dir": str(directory), "tags": tags, "recognised": recognised},
        "environment": {},
    }
    metrics = {fmt.metric_key(k, m): np.zeros((steps.shape[0], 0), np.float32)
               for k, names in fmt.METRICS.items() for m in names}
    return Run(directory, manifest, [], steps, metrics, scalars, [], [], logged=logged)


def _rank(tag: str) -> int:
    """Among tags of one gradscope name: the plain or train-prefixed one before suffixed variants."""
    return 0 if tag.startswith(("global/", "train/")) else 1 if not tag.lower().endswith("_step") else 2
