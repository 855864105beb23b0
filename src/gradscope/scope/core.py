"""Scope: watches a model (and optimizer), keeps per-step statistics on the device, writes the run.

Life of a step: forward hooks add activation sums; output-gradient hooks add backward-flow sums;
at the end of each backward the parameter gradients are measured (so they are pre-clip); the
optimizer's step hook writes them into the step's slot and stamps its host wall time. The step closes
at the next training activity; the slots go to the writer thread in one copy every ``flush_every``
steps, every ``flush_seconds``, and after the 1st and 10th recorded steps (so a live view fills fast).
"""

from __future__ import annotations

import atexit
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.run import format as fmt
from gradscope.run.writer import NullWriter, RunWriter, deferred_interrupts
from gradscope.scope import amp, distributed, hooks
from gradscope.scope.buffers import StepBuffers
from gradscope.scope.loop import LoopChecks
from gradscope.scope.modules import ModuleRecorder
from gradscope.scope.params import ParamRecorder
from gradscope.scope.rows import plan
from gradscope.scope.setup import (
    FailedStart,
    check_args,
    exception_event,
    make_atexit,
    make_sinks,
    open_log_dir,
    record_exception,
    unwrap_optimizer,
)
from gradscope.scope.step import StepState
from gradscope.scope.stopping import Stopper, check_live
from gradscope.scope.watchdog import Watchdog

EARLY_FLUSHES = (1, 10)  # recorded-step counts flushed at once, whatever flush_every says


def _check_flush_seconds(value: Any) -> None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0)
    if not ok:
        raise ValueError(f"watch(flush_seconds={value!r}): must be a positive number of seconds, or None "
                         "to flush by step count only")


class Scope:
    """A watched training run. Create with :func:`gradscope.watch`; use as a context manager.

    Composed of parts that share one :class:`StepState`: a :class:`ParamRecorder` (gradients,
    optimizer steps, clips, AMP), a :class:`ModuleRecorder` (activations, flow, depth) and the
    :class:`StepBuffers` they write into. The Scope itself attaches hooks, closes steps and flushes.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        every: int = 1,
        flush_every: int = 100,
        flush_seconds: float | None = 30.0,
        activations: bool = True,
        flow: bool = True,
        update_every: int = 10,
        overwrite: bool = False,
        tensorboard: bool | None = None,
        scaler: torch.amp.GradScaler | None = None,
        compact: bool = True,
        start_step: int = 0,
        live: bool = True,
        on_finding: Callable[[Any], Any] | None = None,
        stop_on: str | Iterable[str] | None = None,
    ) -> None:
        if not isinstance(start_step, int) or isinstance(start_step, bool) or start_step < 0:
            raise ValueError(f"watch(start_step={start_step!r}): must be a whole number >= 0")
        opts, wrapper_scaler = check_args(model, optimizer, every, flush_every, update_every, include, exclude)
        rule = check_live(live, on_finding, stop_on)
        scaler = scaler if scaler is not None else wrapper_scaler
        _check_flush_seconds(flush_seconds)
        # Time-based (and early) flushes only in a single process: every rank must flush at the same
        # step, because a flush all-reduces the non-finite counts.
        self._flush_seconds_given = flush_seconds
        self.flush_seconds = flush_seconds if distributed.world_size() == 1 else None
        self._compiled = hasattr(model, "_orig_mod")
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd module: name rows as the original
        self._rank0 = distributed.rank() == 0
        claim = None
        given_existed = log_dir is not None and Path(log_dir).exists()
        if self._rank0:
            self.log_dir, claim = open_log_dir(log_dir, overwrite)
        else:
            self.log_dir = Path(log_dir or ".")
        self._handles: list[Any] = []
        self._step_handles: list[Any] = []
        undo = FailedStart(self, self.log_dir if self._rank0 else None, claim,
                           keep_dir=given_existed and self.log_dir == Path(log_dir))  # type: ignore[arg-type]
        try:
            self._start(model, opts, include, exclude, every, flush_every, activations, flow, update_every,
                        tensorboard, scaler, compact, claim, (live, on_finding, stop_on, rule))
            self._state.index = start_step
        except BaseException:
            undo()  # a failed watch() leaves no hook and no file behind
            raise

    def _start(self, model: nn.Module, opts: list[torch.optim.Optimizer], include: Any, exclude: Any, every: int,
               flush_every: int, activations: bool, flow: bool, update_every: int, tensorboard: bool | None,
               scaler: torch.amp.GradScaler | None, compact: bool, claim: Any, live_args: tuple[Any, ...]) -> None:
        live, on_finding, stop_on, rule = live_args
        self.every, self.flush_every, self.update_every = every, flush_every, update_every
        self._flushed_at = time.monotonic()
        self._recorded = 0  # steps handed to the writer so far, for the early flushes
        self.activations, self.flow = activations, flow
        self._model: nn.Module | None = model
        self._optimizers: list[torch.optim.Optimizer] = opts
        named, watched, self._rows, hooked = plan(model, include, exclude)
        self._named = named
        self._device = named[0][1].device if named else torch.device("cpu")
        self._in_flush = False
        self._latest: dict[str, float] = {}
        self._buffers = StepBuffers(flush_every, self._device, {"param": len(self._rows)})
        self._state = StepState(every, update_every, self._buffers)
        self._module_side = ModuleRecorder(hooked, self._rows, self._state, self._begin_activity,
                                           activations=activations, flow=flow, device=self._device, root=model)
        self._param_side = ParamRecorder(named, watched, self._state, self._module_side, opts, scaler,
                                         self._device, self._begin_activity, self._mark_stepped, self.event)
        self._stopper = Stopper.make(self.log_dir, live, on_finding, rule, self._rank0, self._device)
        sinks = [self._stopper.live] if self._stopper.live is not None else []
        self._loop = LoopChecks(model, named, self._state, opts, self._begin_activity, self.event)
        self._writer: RunWriter | NullWriter = (
            RunWriter(self.log_dir, make_sinks(self.log_dir, tensorboard) + sinks, compact=compact, claim=claim)
            if self._rank0 else NullWriter()
        )
        if self._stopper.live is not None:
            self._stopper.live.bind(self._writer.submit, self._writer.write_events, self._writer.sinks)
        self._config = {
            "include": list(include) if include is not None else None,
            "exclude": list(exclude) if exclude is not None else None,
            "every": every, "flush_every": flush_every, "flush_seconds": self._flush_seconds_given,
            "update_every": update_every, "activations": activations, "flow": flow, "optimizers": len(opts),
            "optimizer_types": [type(o).__name__ for o in opts],
            "model": type(model).__name__, "started": self._buffers.origin,
            "world_size": distributed.world_size(), "amp": scaler is not None,
            "live": live, "stop_on": stop_on if stop_on is None or isinstance(stop_on, str) else sorted(stop_on),
        }
        self._env = fmt.environment()
        self._write_manifest()
        self._attach()
        self._atexit = make_atexit(weakref.ref(self))
        atexit.register(self._atexit)

    # -- public ---------------------------------------------------------------------------------
    @property
    def step_index(self) -> int:
        """Index of the step being recorded now (optimizer steps since watch())."""
        return self._state.index

    def log(self, **scalars: Tensor | float) -> None:
        """Record per-step scalars (loss, accuracy, ...). Tensors stay on the device: no sync."""
        state = self._state
        if state.closed:
            return
        self._check_stop(at_optimizer=False)
        if not state.scheduled():
            return
        for name in scalars:
            if self._own_scalar(name):
                raise ValueError(f"scope.log({name}=...): {name!r} is gradscope's own measurement "
                                 f"({fmt.RESERVED_SCALARS.get(name, 'a learning rate')}); log yours under "
                                 f"another name, e.g. scope.log(my_{name}=...)")
        slot = state.ensure_slot()
        for name, value in scalars.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(f"scope.log({name}=...) needs a scalar, got a tensor of shape "
                                     f"{tuple(value.shape)}: reduce it first, e.g. .mean()")
                value = value.detach().to(self._device)
            elif not isinstance(value, (int, float)):
                raise TypeError(f"scope.log({name}=...) needs a number or a scalar tensor, "
                                f"got {type(value).__name__}")
            self._buffers.put_scalar(name, slot, value)

    def _own_scalar(self, name: str) -> bool:
        """Whether gradscope records ``name`` itself in this run: grad_norm and lr always, the clip
        scalars once gradscope.clip reports here, the AMP ones with a GradScaler."""
        if not fmt.reserved_scalar(name):
            return False
        if name in ("clip_coef", "clipped"):
            return self._param_side.records_clip
        if name in ("amp_scale", "amp_skipped"):
            return self._param_side.scaler is not None
        return True

    def event(self, kind: str, **data: Any) -> None:
        """Record a discrete event (plain Python values) at the current step."""
        self._state.event(kind, **data)

    def step(self) -> None:
        """Close the current step by hand; only for watch() without an optimizer."""
        if self._optimizers:
            raise RuntimeError("watch() was given an optimizer, so steps are recorded at optimizer.step(); "
                               "do not call scope.step() as well")
        if self._state.closed:
            return
        self._check_stop(at_optimizer=True)
        self._begin_activity()
        if self._state.scheduled():
            self._param_side.record()
        self._mark_stepped()

    def flush(self, wait: bool = False) -> None:
        """Close the step if the optimizer has stepped, and hand recorded steps to the writer."""
        if self._state.closed:
            return
        if self._state.stepped:
            self._advance(flush=False)
        self._flush()
        if wait:
            self._writer.drain()

    def close(self) -> None:
        """Flush everything, wait for the writer, remove every hook and drop every reference."""
        self._close(None, local=False)

    def _close(self, exc: BaseException | None, local: bool) -> None:
        """Close; ``local`` (the exception path, interpreter exit) runs no collective: the other ranks
        may be inside one of their own (DDP's all-reduce) or gone. A Ctrl-C meanwhile is held until
        the recorded steps are on disk."""
        state = self._state
        if state.closed:
            return
        with deferred_interrupts():
            if exc is not None and record_exception(exc):
                # after optimizer.step() the recorded step is done: the exception is in the next one
                state.events.append({"step": state.index + int(state.stepped), "kind": "exception",
                                     **exception_event(exc)})
            if state.slot is not None:
                self._commit_step()
            self._flush(collective=not local)
            if self._stopper.live is not None:  # the last job: diagnose the complete run, on the writer thread
                self._writer.submit(self._stopper.live.finish)
            state.closed = True
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._detach_step_hooks()
            self._writer.close()
            atexit.unregister(self._atexit)
        self._model = None
        self._optimizers, self._named = [], []
        self._param_side.close()
        self._module_side.close()
        self._loop.close()

    def latest(self) -> dict[str, float]:
        """The last flushed step's headline statistics as floats (``step``, ``grad_norm``, ``loss``, ``lr``,
        ``layer_grad_norm_min``/``max``, ``nonfinite``, ...): no sync, at most ``flush_every`` steps old;
        ``scope.flush(wait=True)`` brings it up to date. Empty before the first flush and on ranks > 0."""
        return dict(self._latest)

    def _keep_latest(self, arrays: dict[str, Any]) -> dict[str, Any]:
        from gradscope.scope.latest import summarise

        self._latest = summarise(arrays)  # on the writer thread: a new dict, swapped in at once
        return arrays
    def findings(self) -> list[Any]:
        """The live findings so far (rank 0; after close: those of ``gradscope analyze`` on the run)."""
        return self._stopper.findings()

    @property
    def write_errors(self) -> list[str]:
        """Errors the writer met (disk full, permissions); empty when everything was written."""
        sinks = getattr(self._writer, "sinks", [])
        return list(self._writer.errors) + [e for s in sinks for e in getattr(s, "errors", [])]

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the user's exception propagates unchanged, after a local close
            self._close(exc if exc is not None else exc_type(), local=True)

    # -- attach ---------------------------------------------------------------------------------
    def _attach(self) -> None:
        # With every > 1 the per-module and per-parameter hooks are attached only for recorded steps
        # (hook dispatch alone costs ~1 % of a small model's step); one pre-hook on the root module
        # then marks where a step begins. A compiled model keeps its hooks (each change recompiles).
        self._toggle = (self._module_side.hooked and self.every > 1 and self._model is not None
                        and not self._compiled)
        self._root_seen = False
        self._attach_step_hooks()
        if self._toggle:
            assert self._model is not None
            self._handles.append(self._model.register_forward_pre_hook(hooks.root_pre_hook(self._on_root_forward)))
        if self._stopper.rule is not None:  # before the recorder's hooks: stop before any of its work
            for opt in self._optimizers:
                self._handles.append(opt.register_step_pre_hook(hooks.optimizer_hook(self._on_optimizer_check)))
        self._param_side.attach_optimizers(self._handles)
        assert self._model is not None
        self._watchdog = Watchdog(self._model, self._named, self._optimizers, self.event)
        self._handles.append(self._watchdog)
        self._loop.attach(self._handles, module_hooks=self._module_side.hooked)
        if self._param_side.scaler is None and self._optimizers:
            self._scaler_watch = amp.ScalerStepWatch(self._on_scaler_step)
            self._handles.append(self._scaler_watch)

    def _on_scaler_step(self, scaler: torch.amp.GradScaler, optimizer: Any) -> None:
        """Some GradScaler steps an optimizer; if it is ours, watch() was not given the scaler."""
        if self._state.closed or self._param_side.scaler is not None or not scaler.is_enabled():
            return
        try:
            inner = unwrap_optimizer(optimizer)[0]
        except TypeError:
            return
        if not any(inner is o for o in self._optimizers):
            return
        self._scaler_watch.remove()
        self._param_side.adopt_scaler(scaler, self._handles)
        self._config["amp"] = True
        self._state.rows_dirty = True  # the manifest is written again with amp: true
        self.event("amp_scaler_found")
        warnings.warn("gradscope: a torch.amp.GradScaler steps the watched optimizer but watch() was not "
                      "given it; gradscope now divides its statistics by the loss scale and records skipped "
                      "steps. Pass it to say so: gradscope.watch(model, optimizer, scaler=scaler)",
                      UserWarning, stacklevel=3)

    def _attach_step_hooks(self) -> None:
        """Forward hooks on the watched modules and gradient hooks on the trainable parameters."""
        self._module_side.attach(self._step_handles)
        self._param_side.attach(self._step_handles)

    def _detach_step_hooks(self) -> None:
        for h in self._step_handles:
            h.remove()
        self._step_handles.clear()
        self._param_side.detached()

    def _mark_stepped(self) -> None:
        """The optimizer stepped: the step closes at the next activity. Hooks follow the schedule."""
        state = self._state
        state.stepped = True
        if state.slot is not None:
            self._buffers.stamp(state.slot)
        self._loop.on_stepped()
        if self._toggle and not self._root_seen:
            # The loop calls submodules, not the model: without the root pre-hook nothing would mark
            # where an unrecorded step starts, so the hooks stay on.
            self._toggle = False
        if self._toggle and not state.closed:
            wanted = (state.index + 1) % self.every == 0
            if wanted and not self._step_handles:
                self._attach_step_hooks()
            elif not wanted and self._step_handles:
                self._detach_step_hooks()

    def _on_root_forward(self) -> None:
        """A forward of the whole model (hooks detached): a training forward begins a new step."""
        self._root_seen = True
        if (self._state.closed or self._model is None or not self._state.trains(self._model)
                or not torch.is_grad_enabled()):
            return
        if not hooks.in_backward():
            self._begin_activity()

    # -- stop_on --------------------------------------------------------------------------------
    def _on_optimizer_check(self, opt: Any) -> None:
        if not self._state.closed:
            self._check_stop(at_optimizer=True)

    def _check_stop(self, at_optimizer: bool) -> None:
        """Raise HealthError when live diagnosis found what ``stop_on`` names: record it, close, raise."""
        finding = self._stopper.pending(at_optimizer)
        if finding is None:
            return
        err = self._stopper.error(finding, self._state.index)
        self.event("exception", type=type(err).__name__, message=str(err)[:500], finding=finding.to_json())
        self.close()
        raise err

    # -- step bookkeeping -----------------------------------------------------------------------
    def _begin_activity(self) -> None:
        if self._state.stepped:
            self._advance(flush=True)

    def _advance(self, flush: bool) -> None:
        state = self._state
        if state.slot is not None:
            self._commit_step()
        state.index += 1
        state.stepped = False
        state.slot = None
        if flush and self._flush_due():
            self._flush()

    def _flush_due(self) -> bool:
        """Buffers full; with ``flush_seconds``: that long since the last flush, or the 1st / 10th
        recorded step waiting. Host clock and counters only."""
        n = len(self._buffers)
        if not n or self._buffers.full:
            return n > 0
        if self.flush_seconds is None:
            return False
        return self._recorded + n in EARLY_FLUSHES or time.monotonic() - self._flushed_at >= self.flush_seconds

    def _commit_step(self) -> None:
        slot = self._state.slot
        assert slot is not None
        if self._buffers.wall[slot] != self._buffers.wall[slot]:  # NaN: closed before its optimizer step
            self._buffers.stamp(slot)
        self._module_side.commit(slot)

    def _flush(self, collective: bool = True) -> None:
        self._in_flush = True  # host copies below are the one deliberate sync point
        state = self._state
        done, flushed = None, len(self._buffers) > 0
        try:
            self._watchdog.check()
            if state.rows_dirty:
                self._write_manifest()
            if len(self._buffers):
                if collective and distributed.world_size() > 1:
                    distributed.reduce_nonfinite(self._buffers.filled())
                self._recorded += len(self._buffers)
                self._flushed_at = time.monotonic()
                take = self._buffers.take()
                job, done = self._stopper.chunk_job(self._writer, lambda: self._keep_latest(take()))
                self._writer.submit(job)
            if state.events:
                events, state.events = state.events, []
                self._writer.submit(lambda: self._writer.write_events(events))
            self._stopper.settle(done, flushed and collective)  # stop_on: wait for this flush's verdict (stopping.py)
        finally:
            self._in_flush = False

    def _write_manifest(self) -> None:
        rows = list(self._rows) + self._module_side.rows()
        manifest = fmt.make_manifest(rows, self._config, self._env)
        manifest["containers"] = self._module_side.traces.describe()
        self._writer.submit(lambda: self._writer.write_manifest(manifest))
        self._state.rows_dirty = False


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    log_dir: str | os.PathLike[str] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    every: int = 1,
    flush_every: int = 100,
    flush_seconds: float | None = 30.0,
    activations: bool = True,
    flow: bool = True,
    update_every: int = 10,
    overwrite: bool = False,
    tensorboard: bool | None = None,
    scaler: torch.amp.GradScaler | None = None,
    compact: bool = True,
    start_step: int = 0,
    live: bool = True,
    on_finding: Callable[[Any], Any] | None = None,
    stop_on: str | Iterable[str] | None = None,
) -> Scope:
    """Watch ``model`` (and ``optimizer``): record gradient and activation health to ``log_dir``.

    ``include``/``exclude`` are glob patterns on parameter and module names; ``every`` records every
    N-th optimizer step; ``update_every`` samples the update ratio (it needs a weight copy) every N
    recorded steps; ``flush_every`` steps are copied to the host and written at once, or fewer when
    ``flush_seconds`` have passed (None: only by count; single process only), and the 1st and 10th
    recorded steps early, so TensorBoard shows a run within seconds;
    ``scaler``: the GradScaler under AMP, so statistics are unscaled and skipped steps recorded;
    ``tensorboard`` mirrors the run into ``log_dir/tb`` (None: when tensorboard is installed);
    ``compact`` merges the chunks into one memory-mappable array per metric at close (fast reading);
    ``start_step`` numbers the first step (a resumed run's global step, so steps match its logs).
    ``optimizer`` may be a framework's wrapper (Lightning's, accelerate's): the torch optimizer inside
    is the one watched, and a GradScaler the wrapper holds is used when ``scaler`` is not given.
    ``live`` diagnoses the run on the writer thread as it is written: each new finding is logged (the
    ``gradscope`` logger), added to the run's events and passed to ``on_finding(finding)``; with
    ``stop_on`` ("error", "warning", a list of finding kinds) the next optimizer step (or
    ``scope.log``) raises :class:`gradscope.HealthError` and the run is closed with the error in it.
    """
    return Scope(
        model, optimizer, log_dir=log_dir, include=include, exclude=exclude, every=every,
        flush_every=flush_every, flush_seconds=flush_seconds, activations=activations, flow=flow,
        update_every=update_every, overwrite=overwrite, tensorboard=tensorboard, scaler=scaler,
        compact=compact, start_step=start_step, live=live, on_finding=on_finding, stop_on=stop_on,
    )
