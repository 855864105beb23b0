"""What watch() does before attaching: argument checks, the run directory, sinks, exit handling."""

from __future__ import annotations

import itertools
import os
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.run import format as fmt
from gradscope.run import rundir


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


def default_log_dir() -> Path:
    """``runs/gradscope-YYYYmmdd-HHMMSS``; ``open_log_dir`` versions it (-2, -3, ...) when taken."""
    return Path("runs") / time.strftime("gradscope-%Y%m%d-%H%M%S")


def _candidates(base: Path) -> Iterator[Path]:
    yield base
    for k in itertools.count(2):
        yield base.with_name(f"{base.name}-{k}")


def resolve_log_dir(log_dir: str | os.PathLike[str] | None, overwrite: bool = False) -> Path:
    """The directory a run given ``log_dir`` goes to, by the one convention of watch() and callbacks.

    ``log_dir`` itself when it holds nothing gradscope writes (or, with ``overwrite=True``, when it
    holds a gradscope run, whose own files are then cleared); otherwise the first free ``log_dir-2``,
    ``log_dir-3``, ... (like Lightning's versions). None: ``runs/gradscope-<time>``, versioned the same
    way. Raises FileExistsError when ``log_dir`` is being written by a live Scope, or when
    ``overwrite=True`` meets files gradscope did not write.
    """
    default = log_dir is None
    base = default_log_dir() if default else Path(log_dir)  # type: ignore[arg-type]
    for cand in _candidates(base):
        verdict = _verdict(cand, rundir.state(cand), overwrite and not default, default)
        if verdict is not None:
            return cand
    raise AssertionError  # unreachable: the candidates never end


def _verdict(path: Path, state: str, overwrite: bool, default: bool) -> str | None:
    """"use", "clear" (use after clearing), or None (try the next version); raises when neither."""
    if state == "free":
        return "use"
    if state == "live":
        if default:
            return None
        raise rundir.RunDirInUse(f"log_dir {path} is being written by another gradscope.watch() right now: "
                                 "give each run its own log_dir")
    if not overwrite:
        return None
    if state == "run":
        return "clear"
    raise FileExistsError(
        f"log_dir {path} holds files gradscope did not write ({_foreign(path)}); overwrite=True clears only "
        "gradscope's own runs: choose another log_dir, or move those files away")


def _foreign(path: Path) -> str:
    names = [n for n in rundir.OWN_NAMES if os.path.lexists(path / n) and n != rundir.LOCK]
    if fmt.MANIFEST in names:
        return f"its {fmt.MANIFEST} is not a gradscope manifest"
    return ", ".join(names)


def open_log_dir(log_dir: str | os.PathLike[str] | None,
                 overwrite: bool) -> tuple[Path, rundir.DirClaim | None]:
    """Resolve ``log_dir`` (see resolve_log_dir), claim it atomically and clear an overwritten run.

    The path is printed once (to stderr) when gradscope chose it: the default, or a new version.
    """
    default = log_dir is None
    base = default_log_dir() if default else Path(log_dir)  # type: ignore[arg-type]
    for cand in _candidates(base):
        if _verdict(cand, rundir.state(cand), overwrite and not default, default) is None:
            continue
        try:
            claim = rundir.DirClaim.acquire(cand)
        except rundir.RunDirInUse:
            if default:
                continue
            raise
        except OSError:  # cannot even create it: the writer warns, training goes on unrecorded
            return cand, None
        try:  # looked at again under the claim: another process may have written in between
            verdict = _verdict(cand, rundir.state(cand, ours=claim), overwrite and not default, default)
            if verdict == "clear":
                rundir.clear_run(cand)
            if verdict is not None:
                rundir.refuse_links(cand)
        except BaseException:
            claim.release()
            raise
        if verdict is None:
            claim.release()
            continue
        if cand != base or default:
            print(f"gradscope: recording to {cand}", file=sys.stderr, flush=True)
        return cand, claim
    raise AssertionError  # unreachable


def make_atexit(ref: weakref.ReferenceType[Any]) -> Any:
    def close_at_exit() -> None:
        scope = ref()
        if scope is not None:
            scope.close()

    return close_at_exit
