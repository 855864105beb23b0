"""What watch() does before attaching: argument checks, the run directory, sinks, exit handling."""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.run import format as fmt


def make_sinks(log_dir: Path, tensorboard: bool | None) -> list[Any]:
    """Extra sinks beside the run directory: TensorBoard when asked for (None: when installed)."""
    from gradscope import _optional

    auto = tensorboard is None
    if auto:
        tensorboard = _optional.available("tensorboard")
    if not tensorboard:
        return []
    try:
        from gradscope.sinks.tensorboard import TensorBoardSink

        return [TensorBoardSink(log_dir / fmt.TB_DIR)]
    except ImportError:
        if auto:  # a broken tensorboard install must not stop watch() when nobody asked for it
            return []
        raise


def check_args(model: Any, optimizer: Any, every: int, flush_every: int, update_every: int,
                include: Any, exclude: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch() needs a torch.nn.Module as model, got {type(model).__name__}")
    opts = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    for opt in opts:
        if opt is not None and not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"watch() needs a torch.optim.Optimizer (or None), got {type(opt).__name__}")
    for name, value in (("every", every), ("flush_every", flush_every), ("update_every", update_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"watch({name}={value!r}): must be a positive integer")
    for name, pats in (("include", include), ("exclude", exclude)):
        if isinstance(pats, str):
            raise TypeError(f"watch({name}=...) takes a list of glob patterns, e.g. {name}=[{pats!r}]")


def prepare_dir(log_dir: str | os.PathLike[str] | None, overwrite: bool) -> Path:
    if log_dir is None:
        log_dir = Path("runs") / time.strftime("gradscope-%Y%m%d-%H%M%S")
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"log_dir {path} exists and is not a directory: choose another log_dir")
    if (path / fmt.MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(
                f"log_dir {path} already holds a gradscope run; choose a new log_dir, or pass "
                "overwrite=True to replace it"
            )
        clear_run(path)
    return path


def clear_run(path: Path) -> None:
    import shutil

    for name in (fmt.MANIFEST, fmt.EVENTS):
        (path / name).unlink(missing_ok=True)
    from gradscope.run import merged

    for name in (fmt.CHUNK_DIR, fmt.TB_DIR, merged.DIR):
        shutil.rmtree(path / name, ignore_errors=True)


def make_atexit(ref: weakref.ReferenceType[Any]) -> Any:
    def close_at_exit() -> None:
        scope = ref()
        if scope is not None:
            scope.close()

    return close_at_exit
