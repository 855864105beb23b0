"""The comparison grid: one ``Config`` per training run, its hash, its directory name, and grid designs.

product   every combination of the axes (activation x init x depth x clip x lr, or regime x clip x lr
          for fine-tuning), each with every seed.
sweep     one axis at a time around a baseline (the first value of every axis): fewer runs, each
          difference attributable to one change. ``--quick`` uses it.

A configuration's directory is ``<readable name>-<hash>``; the hash covers every field (and
``HARNESS_VERSION``), so the same configuration always lands in the same directory and a finished
one is skipped on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass

# Bump when training code changes in a way that changes results: old directories are then not reused.
HARNESS_VERSION = 1

MLP_AXES = ("activation", "init", "depth", "clip", "lr")
FINETUNE_AXES = ("regime", "clip", "lr")
DESIGNS = ("product", "sweep")


@dataclass(frozen=True)
class Config:
    """Everything that decides one training run's numbers. ``None`` where a field does not apply."""

    task: str
    seed: int
    steps: int
    lr: float
    clip: str
    activation: str | None = None
    init: str | None = None
    depth: int | None = None
    width: int | None = None
    batch: int = 128
    regime: str | None = None
    backbone: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def key(self) -> str:
        """A stable 10-hex-digit hash of every field and the harness version."""
        blob = json.dumps({"v": HARNESS_VERSION, **self.to_json()}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def axes(self) -> tuple[str, ...]:
        return FINETUNE_AXES if self.regime is not None else MLP_AXES

    @property
    def group(self) -> tuple:
        """The configuration without its seed: what seeds are averaged over."""
        return tuple((k, v) for k, v in self.to_json().items() if k != "seed")

    @property
    def dirname(self) -> str:
        if self.regime is not None:
            parts = [self.task, self.backbone or "", self.regime, self.clip]
        else:
            parts = [self.task, self.activation, self.init, f"d{self.depth}", self.clip]
        parts += [f"lr{self.lr:g}", f"s{self.seed}", self.key]
        return "-".join(str(p) for p in parts if p != "")


def expand(base: dict, axes: dict[str, list], seeds: list[int], design: str = "product") -> list[Config]:
    """Configs for ``axes`` (name -> values; the first value is the baseline) times ``seeds``.

    ``base`` holds the fields that do not vary (task, steps, width, ...). Order: by configuration,
    then seed, so a progress bar fills configuration by configuration and duplicates are dropped.
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose from {', '.join(DESIGNS)}")
    names = list(axes)
    if design == "product":
        combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]
    else:
        baseline = {n: axes[n][0] for n in names}
        combos = [dict(baseline)]
        for n in names:
            combos += [{**baseline, n: v} for v in axes[n][1:]]
    out: list[Config] = []
    seen: set[str] = set()
    for combo in combos:
        for seed in seeds:
            cfg = Config(**{**base, **combo, "seed": seed})
            if cfg.key not in seen:
                seen.add(cfg.key)
                out.append(cfg)
    return out


def varying(configs: list[Config]) -> list[str]:
    """Axis names that take more than one value across ``configs`` (the columns worth showing)."""
    if not configs:
        return []
    axes = configs[0].axes
    return [a for a in axes if len({getattr(c, a) for c in configs}) > 1]
