"""Classification tasks for ``gradscope compare``: data that ships with the code or with an installed package.

spirals   synthetic, known answer: two interleaved spirals (``data.spirals``); a good network reaches
          ~100 % test accuracy, a linear one ~50-65 %. Train 2048 points, test 1024 (other seed).
iris      real: Fisher's iris (1936), 150 flowers x 4 measurements, 3 species; the UCI file that SciPy
          ships as test data (``scipy/io/arff/tests/data/iris.arff``), read as text (nothing downloaded).
          A fixed stratified split: 40 flowers per species train, 10 test; features standardised.
digits    real, optional: scikit-learn's bundled 8x8 handwritten digits (1797 x 64, 10 classes),
          when scikit-learn is installed. Fixed split: every 5th image is test.
finetune  a transformers encoder fine-tuned on short synthetic reviews (see ``finetune.py``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from gradscope.experiments.data import spirals


class TaskError(ValueError):
    """A task cannot be loaded here; the message says what to install."""


@dataclass(frozen=True)
class Split:
    """Standardised inputs and integer labels for one task."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int

    @property
    def in_dim(self) -> int:
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class TaskInfo:
    name: str
    kind: str  # "mlp": a deep MLP on features; "finetune": a transformers encoder on text
    target_loss: float  # "steps to target" counts steps until the smoothed training loss gets here
    source: str


TASKS: dict[str, TaskInfo] = {
    "spirals": TaskInfo("spirals", "mlp", 0.35, "synthetic two spirals (gradscope.experiments.data)"),
    "iris": TaskInfo("iris", "mlp", 0.25, "Fisher's iris, from SciPy's bundled UCI file"),
    "digits": TaskInfo("digits", "mlp", 0.35, "8x8 digits bundled with scikit-learn (optional)"),
    "finetune": TaskInfo("finetune", "finetune", 0.35, "synthetic reviews, transformers encoder"),
}


def load(name: str) -> Split:
    """The data of MLP task ``name`` (cached: every configuration sees the same tensors)."""
    loaders = {"spirals": _spirals, "iris": _iris, "digits": _digits}
    if name not in loaders:
        raise TaskError(f"task {name!r} has no feature data; MLP tasks: {', '.join(loaders)}")
    return loaders[name]()


@cache
def _spirals() -> Split:
    x, y = spirals(2048, seed=0)
    xt, yt = spirals(1024, seed=1)
    return Split(x, y, xt, yt, 2)


def iris_path() -> Path:
    """SciPy's copy of the UCI iris file, located without importing SciPy."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("task 'iris' reads the iris file bundled with SciPy: pip install scipy")
    path = Path(next(iter(spec.submodule_search_locations))) / "io" / "arff" / "tests" / "data" / "iris.arff"
    if not path.is_file():
        raise TaskError(f"task 'iris': {path} is missing (SciPy installed without its test data); "
                        "reinstall with: pip install --force-reinstall scipy")
    return path


@cache
def _iris() -> Split:
    rows, labels, names = [], [], {}
    for line in iris_path().read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(",")
        if len(parts) != 5 or line.lstrip().startswith(("%", "@")):
            continue
        rows.append([float(v) for v in parts[:4]])
        labels.append(names.setdefault(parts[4], len(names)))
    x, y = torch.tensor(rows), torch.tensor(labels)
    if x.shape != (150, 4) or len(names) != 3:
        raise TaskError(f"task 'iris': {iris_path()} does not hold 150 rows of 3 species")
    test = torch.zeros(150, dtype=torch.bool)
    for c in range(3):  # fixed stratified split: a seeded permutation within each species
        idx = torch.nonzero(y == c).flatten()
        perm = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(c))]
        test[perm[:10]] = True
    return _standardise(x[~test], y[~test], x[test], y[test], 3)


@cache
def _digits() -> Split:
    if importlib.util.find_spec("sklearn") is None:
        raise TaskError("task 'digits' uses the digits bundled with scikit-learn: pip install scikit-learn")
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)
    test = torch.arange(x.shape[0]) % 5 == 0
    return _standardise(x[~test], y[~test], x[test], y[test], 10)


def _standardise(x: Tensor, y: Tensor, xt: Tensor, yt: Tensor, classes: int) -> Split:
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    return Split((x - mean) / std, y, (xt - mean) / std, yt, classes)
