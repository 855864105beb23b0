"""Run a grid of configurations: one gradscope run directory per config, a result file once it finishes.

    OUT/<config dirname>/            the run (manifest.json, chunks/, events.jsonl, tb/ when enabled)
    OUT/<config dirname>/result.json the config, final metrics, table metrics and small curves

``result.json`` is written (atomically) only after training, summary and diagnosis finish, so a
directory without one is an interrupted config: the next run redoes it; a directory with one for the
same config is skipped. Ctrl-C stops the grid after keeping everything already finished.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradscope.experiments.grid import Config
from gradscope.experiments.tasks import TASKS

RESULT = "result.json"


@dataclass
class GridOutcome:
    results: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0
    interrupted: bool = False
    seconds: float = 0.0


def load_result(run_dir: Path, cfg: Config | None = None) -> dict[str, Any] | None:
    """The finished result in ``run_dir`` (for ``cfg`` when given), or None."""
    file = run_dir / RESULT
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or (cfg is not None and result.get("config") != cfg.to_json()):
        return None
    return result


def _write_json(file: Path, payload: dict[str, Any]) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, file)


def train(cfg: Config, run_dir: Path, tensorboard: bool) -> dict[str, float]:
    """Train ``cfg`` with gradscope watching into ``run_dir``; final train/test loss and accuracy."""
    if TASKS[cfg.task].kind == "finetune":
        from gradscope.experiments.finetune import train_finetune

        return train_finetune(cfg, run_dir, tensorboard)
    from gradscope.experiments.train import train_mlp

    return train_mlp(cfg, run_dir, tensorboard)


def run_config(cfg: Config, out: Path, tensorboard: bool = False) -> dict[str, Any]:
    """Train, summarise and diagnose one config; write and return its result."""
    from gradscope.diagnose import diagnose
    from gradscope.experiments.summary import curves, summarize
    from gradscope.run.reader import load_run

    run_dir = out / cfg.dirname
    start = time.perf_counter()
    final = train(cfg, run_dir, tensorboard)
    wall = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run = load_run(run_dir)
        findings = diagnose(run)
    result = {
        "config": cfg.to_json(), "key": cfg.key, "run": cfg.dirname, "final": final,
        "metrics": summarize(run, findings, TASKS[cfg.task].target_loss),
        "train_seconds": round(wall, 3), "curves": curves(run),
    }
    _write_json(run_dir / RESULT, result)
    return result


def run_grid(configs: list[Config], out: Path, *, tensorboard: bool = False, threads: int | None = 1,
             on_progress: Callable[[Config, bool], None] | None = None) -> GridOutcome:
    """Run every config not finished yet under ``out``; ``on_progress(cfg, skipped)`` after each.

    ``threads``: torch CPU threads while training (1 by default: these models are far too small to
    gain from more, and on a shared machine extra threads spin and slow everything down).
    """
    outcome = GridOutcome()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for cfg in configs:
            done = load_result(out / cfg.dirname, cfg)
            skipped = done is not None
            if done is None:
                done = run_config(cfg, out, tensorboard)
            outcome.skipped += skipped
            outcome.ran += not skipped
            outcome.results.append(done)
            if on_progress is not None:
                on_progress(cfg, skipped)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        torch.set_num_threads(old_threads)
    return outcome
