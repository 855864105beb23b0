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


def unwrap_optimizer(optimizer: Any) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler | None]:
    """The torch optimizer inside a framework's wrapper, and the GradScaler the wrapper steps it with.

    Lightning's ``LightningOptimizer`` (``self.optimizers()``), accelerate's ``AcceleratedOptimizer``
    (``accelerator.prepare``, and so a transformers Trainer's optimizer) hold the optimizer whose
    ``step()`` really runs; its step hooks are the ones that fire, so the Scope hooks that one.
    """
    given, scaler = optimizer, None
    if isinstance(optimizer, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"watch() got a learning-rate scheduler ({type(optimizer).__name__}): pass its optimizer, "
                        "e.g. watch(model, scheduler.optimizer)")
    for _ in range(8):  # wrappers of wrappers (accelerate around a LightningOptimizer, ...)
        found = getattr(optimizer, "scaler", None)
        if scaler is None and isinstance(found, torch.amp.GradScaler):
            scaler = found  # accelerate keeps its fp16 GradScaler on the wrapper
        inner = next((v for v in (getattr(optimizer, "optimizer", None), getattr(optimizer, "_optimizer", None))
                      if v is not None and v is not optimizer and _wraps(v)), None)
        if inner is None:
            break
        optimizer = inner
    if not isinstance(optimizer, torch.optim.Optimizer):
        kind = type(given)
        hint = " (that is the parameters: pass the optimizer built from them)" if _is_params(given) else ""
        raise TypeError(f"watch() needs a torch.optim.Optimizer, a list of them, or a wrapper holding one in "
                        f".optimizer (Lightning's LightningOptimizer, accelerate's AcceleratedOptimizer); got "
                        f"{kind.__module__}.{kind.__qualname__}{hint}")
    return optimizer, scaler


def _wraps(obj: Any) -> bool:
    """An optimizer, or something optimizer-like that may hold one (a wrapper of a wrapper)."""
    return isinstance(obj, torch.optim.Optimizer) or hasattr(obj, "param_groups") or hasattr(obj, "optimizer")


def _is_params(obj: Any) -> bool:
    import types

    return isinstance(obj, (types.GeneratorType, torch.Tensor)) or (
        isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(o, torch.Tensor) for o in obj))


def check_args(model: Any, optimizer: Any, every: int, flush_every: int, update_every: int,
               include: Any, exclude: Any) -> tuple[list[torch.optim.Optimizer], torch.amp.GradScaler | None]:
    """Check watch()'s arguments before anything is created; return the unwrapped optimizers and the
    GradScaler a wrapper was found stepping them with (None when none)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"watch() needs a torch.nn.Module as model, got {type(model).__name__}")
    if optimizer is None:
        given: list[Any] = []
    elif isinstance(optimizer, (list, tuple)) and not _is_params(optimizer):
        given = list(optimizer)
    else:
        given = [optimizer]
    opts, scalers = [], []
    for opt in given:
        inner, scaler = unwrap_optimizer(opt)
        opts.append(inner)
        if scaler is not None:
            scalers.append(scaler)
    for name, value in (("every", every), ("flush_every", flush_every), ("update_every", update_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"watch({name}={value!r}): must be a positive integer")
    for name, pats in (("include", include), ("exclude", exclude)):
        if isinstance(pats, str):
            raise TypeError(f"watch({name}=...) takes a list of glob patterns, e.g. {name}=[{pats!r}]")
    return opts, (scalers[0] if scalers else None)


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


class FailedStart:
    """Undo a watch() that raised half-way: remove every hook it added, stop its writer, delete the
    files it created and release its claim on the directory (removing the directory when watch()
    made it), so the model is as before and a retry starts clean."""

    NAMES = (fmt.MANIFEST, fmt.EVENTS, fmt.CHUNK_DIR, fmt.TB_DIR)

    def __init__(self, scope: Any, log_dir: Path | None, claim: Any, keep_dir: bool) -> None:
        self.scope, self.log_dir, self.claim, self.keep_dir = scope, log_dir, claim, keep_dir
        self.before = {n for n in self.NAMES if log_dir is not None and os.path.lexists(log_dir / n)}

    def __call__(self) -> None:
        import shutil

        scope = self.scope
        for h in [*getattr(scope, "_handles", []), *getattr(scope, "_step_handles", [])]:
            h.remove()
        state = getattr(scope, "_state", None)
        if state is not None:
            state.closed = True
        writer = getattr(scope, "_writer", None)
        if writer is not None:
            writer.compact = False
            writer.close()  # drains its queue (the manifest) and releases the claim
        elif self.claim is not None:
            self.claim.release()
        if self.log_dir is None:
            return
        for name in self.NAMES:
            target = self.log_dir / name
            if name in self.before:
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if not self.keep_dir:
            try:
                self.log_dir.rmdir()  # only when empty: it was made for this run
            except OSError:
                pass


def make_atexit(ref: weakref.ReferenceType[Any]) -> Any:
    def close_at_exit() -> None:
        scope = ref()
        if scope is not None:  # at exit the other ranks may be gone: no collective
            scope._close(None, local=True)

    return close_at_exit


TRACEBACK_LINES = 30


def record_exception(exc: BaseException) -> bool:
    """Whether leaving the ``with`` block by ``exc`` is a failure worth an event (not ``sys.exit(0)``)."""
    return not (isinstance(exc, SystemExit) and exc.code in (0, None))


def exception_event(exc: BaseException) -> dict[str, Any]:
    """The event fields of an exception that ended the run: type, message, the traceback's last lines."""
    import traceback

    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    return {"type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "\n".join(lines[-TRACEBACK_LINES:])[-8000:]}
