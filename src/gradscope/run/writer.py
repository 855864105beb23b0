"""RunWriter: writes manifest, chunks and events of a run directory from a background thread.

Every file is written to a temporary name and renamed, so a reader (or a crash) never sees half a
chunk. A failing disk never stops training: the first error is warned about once, what was not
written is kept (bounded) and written again at each flush, so recording resumes with nothing lost
when the disk recovers. ``close`` merges the chunks into
RUN/merged/ (compact.py), so that reading the run is one memory map per array.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.run import format as fmt
from gradscope.run import merged
from gradscope.run.chunks import list_chunks

Job = Callable[[], None]


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _merged_upto(path: Path) -> int:
    """Chunks below this index are covered by RUN/merged/ (0 when there is none or it is not valid)."""
    if not (path / merged.DIR).is_dir() or not (path / fmt.MANIFEST).exists():
        return 0  # a merged/ folder without a manifest is not ours to use (nor to remove)
    try:
        index = merged.read_index(path)
    except (OSError, ValueError):
        return 0
    return 0 if index is None else int(index["chunks_upto"])


def _default(value: Any) -> Any:
    """JSON for the values an event may carry besides plain Python: numpy and torch numbers, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= MAX_EVENT_LIST:
        return value.tolist()
    if type(value).__module__.startswith("torch") and hasattr(value, "numel") and value.numel() <= MAX_EVENT_LIST:
        return value.detach().cpu().tolist()  # on the writer thread: the training thread never waits
    if isinstance(value, (os.PathLike, set, frozenset)):
        return os.fspath(value) if isinstance(value, os.PathLike) else sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON")


MAX_EVENT_LIST = 4096


def deferred_interrupts() -> Any:
    """Hold Ctrl-C (SIGINT) while the block runs, raise it after: a second Ctrl-C during close() must
    not lose the steps still queued. Only the main thread can do this; elsewhere nothing changes."""
    import contextlib
    import signal

    @contextlib.contextmanager
    def held() -> Any:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        got: list[int] = []

        def handler(signum: int, frame: Any) -> None:
            got.append(signum)
            print("gradscope: finishing writing the run before stopping (kill the process to stop now)",
                  file=sys.stderr, flush=True)

        try:
            old = signal.signal(signal.SIGINT, handler)
        except (ValueError, OSError):  # not settable here
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
        if got:
            if callable(old):
                old(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)

    return held()


class RunWriter:
    """Owns one run directory; ``submit`` queues work for the writer thread, ``close`` drains it.

    What cannot be written (a full disk, a lost mount) is kept, up to ``max_pending_bytes``, and
    written again before anything newer, in order: the manifest first, so chunks and manifest agree.
    """

    def __init__(self, path: str | os.PathLike[str], sinks: list[Any] | None = None,
                 compact: bool = True, claim: Any = None, max_pending_bytes: int = 256 << 20) -> None:
        self.path = Path(path)
        self.compact = compact
        self.sinks = list(sinks or [])
        self.errors: list[str] = []
        self.max_pending_bytes = max_pending_bytes
        self._claim = claim
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._chunk_index = 0
        self._wrote_chunks = False
        self._manifest_text: str | None = None  # the newest manifest, until it is on disk
        self._pending: collections.deque[tuple[int, dict[str, np.ndarray], int]] = collections.deque()
        self._pending_events: list[str] = []
        self._pending_bytes = 0
        self.dropped_steps = 0
        try:
            from gradscope.run.rundir import refuse_links

            refuse_links(self.path)
            (self.path / fmt.CHUNK_DIR).mkdir(parents=True, exist_ok=True)
            # Continue numbering after chunks already there (a resumed run appends).
            existing = list_chunks(self.path / fmt.CHUNK_DIR)
            if existing:
                self._chunk_index = existing[-1][0] + 1
            self._chunk_index = max(self._chunk_index, _merged_upto(self.path))
        except (OSError, ValueError) as exc:
            self._fail(f"cannot create run directory {self.path}: {exc}")
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="gradscope-writer", daemon=True)
        self._thread.start()

    # -- thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._queue.task_done()
                return
            try:
                job()
            except Exception as exc:  # never let a disk error escape into training
                self._fail(f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def _fail(self, msg: str, key: str = "write") -> None:
        with self._lock:
            self.errors.append(msg)
            if key in self._warned:
                return
            self._warned.add(key)
        text = {
            "write": f"gradscope could not write the run at {self.path} ({msg}); training continues and "
                     "what was not written is kept and written again at each flush. Check free space and "
                     "permissions of log_dir.",
        }.get(key, f"gradscope, run at {self.path}: {msg}")
        warnings.warn(text, RuntimeWarning, stacklevel=3)

    def submit(self, job: Job) -> None:
        if self._thread.is_alive():
            self._queue.put(job)
        else:  # after close: write inline
            try:
                job()
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}")

    def drain(self) -> None:
        """Block until every queued write is on disk (used by flush(wait=True) and close)."""
        if self._thread.is_alive():
            self._queue.join()

    @property
    def unwritten_steps(self) -> int:
        """Steps kept in memory because they could not be written yet."""
        return sum(len(a["step"]) for _, a, _ in self._pending)

    def close(self) -> None:
        """Drain the queue, write again what failed, merge what is on disk, close the sinks, release
        the directory. A Ctrl-C meanwhile is held until the queued steps are on disk."""
        with deferred_interrupts():
            if self._thread.is_alive():
                self._queue.put(None)
                self._thread.join()
            self._retry()
            lost = self.unwritten_steps
            if lost or self._manifest_text is not None or self._pending_events:
                self._fail(f"{lost} recorded steps and {len(self._pending_events)} event batches could not be "
                           "written and are lost", key="lost")
            if self.compact and self._wrote_chunks:
                self._compact()
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:
                    self._fail(f"sink {type(sink).__name__}: {exc}", key="sink")
            if self._claim is not None:
                self._claim.release()
                self._claim = None

    def _compact(self) -> None:
        """Merge the chunks into RUN/merged/ so that reading the run later is one memory map per array."""
        from gradscope.run.compact import compact_run

        try:
            compact_run(self.path)
        except Exception as exc:  # the chunks are complete without it: report, never raise
            self._fail(f"compacting the chunks: {type(exc).__name__}: {exc}", key="compact")

    # -- work items (run on the writer thread) ---------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest now, or keep it to write before the next chunk (it is never skipped)."""
        self._manifest_text = json.dumps(manifest, indent=1, allow_nan=False)
        for sink in self.sinks:
            self._to_sink(sink, "write_manifest", manifest)
        self._retry()

    def write_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        """Write one flush of steps as the next chunk; kept (bounded) and retried when it fails."""
        nbytes = sum(int(a.nbytes) for a in arrays.values())
        self._pending.append((self._chunk_index, arrays, nbytes))
        self._chunk_index += 1
        self._pending_bytes += nbytes
        for sink in self.sinks:
            self._to_sink(sink, "write_chunk", arrays)
        self._retry()
        while self._pending_bytes > self.max_pending_bytes and len(self._pending) > 1:
            _, old, n = self._pending.popleft()
            self._pending_bytes -= n
            self.dropped_steps += len(old["step"])
            self._fail(f"{self.dropped_steps} steps dropped: more than {self.max_pending_bytes / 2**20:g} MiB "
                       "of recorded steps could not be written", key="dropped")

    def write_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        lines = [line for line in (self._event_line(e) for e in events) if line is not None]
        self._pending_events.append("".join(lines))
        for sink in self.sinks:
            self._to_sink(sink, "write_events", events)
        self._retry()

    def _event_line(self, event: dict[str, Any]) -> str | None:
        """One JSON line; a value that is not JSON (and not a number, array or tensor) is dropped."""
        try:
            return json.dumps(event, allow_nan=True, default=_default) + "\n"
        except (TypeError, ValueError):
            pass
        kept, dropped = {}, []
        for k, v in event.items():
            try:
                json.dumps(v, allow_nan=True, default=_default)
                kept[str(k)] = v
            except (TypeError, ValueError, RecursionError):
                dropped.append(str(k))
        self._fail(f"event {event.get('kind')!r}: dropped value(s) {dropped} that are not JSON "
                   "(pass numbers, strings, lists or dicts)", key="event-value")
        try:
            return json.dumps(kept, allow_nan=True, default=_default) + "\n"
        except (TypeError, ValueError):
            return None

    def _to_sink(self, sink: Any, method: str, data: Any) -> None:
        try:
            getattr(sink, method)(data)
        except Exception as exc:  # a broken sink never loses the run directory's data
            self._fail(f"sink {type(sink).__name__}: {type(exc).__name__}: {exc}", key="sink")

    def _retry(self) -> None:
        """Write what is pending, oldest first. A disk error (OSError) stops here and keeps the rest for
        the next try; anything else is a bad item, reported and dropped so it cannot block the rest."""
        while True:
            try:
                if not self._write_next():
                    return
            except OSError as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
                return
            except Exception as exc:
                self._drop_next()
                self._fail(f"{type(exc).__name__}: {exc}", key="bad-item")

    def _write_next(self) -> bool:
        """Write the oldest pending item; False when nothing is pending."""
        if self._manifest_text is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            text = self._manifest_text
            _atomic_write(self.path / fmt.MANIFEST, lambda f: f.write(text), mode="w")
            self._manifest_text = None
        elif self._pending:
            index, arrays, _ = self._pending[0]
            self._write_chunk_file(index, arrays)
            self._drop_next()
            self._wrote_chunks = True
        elif self._pending_events:
            self._append_events(self._pending_events[0])
            self._pending_events.pop(0)
        else:
            return False
        return True

    def _drop_next(self) -> None:
        if self._manifest_text is not None:
            self._manifest_text = None
        elif self._pending:
            self._pending_bytes -= self._pending.popleft()[2]
        elif self._pending_events:
            self._pending_events.pop(0)

    def _write_chunk_file(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        chunk_dir = self.path / fmt.CHUNK_DIR
        if os.path.islink(chunk_dir):
            raise OSError(f"{chunk_dir} is a symbolic link; gradscope never writes through links")
        chunk_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(chunk_dir / fmt.chunk_name(index), lambda f: np.savez(f, **arrays))

    def _append_events(self, text: str) -> None:
        """One append of whole lines; a failed append is cut back, so a retry never tears a line."""
        path = self.path / fmt.EVENTS
        with open(path, "a", encoding="utf-8") as f:
            start = f.tell()
            try:
                f.write(text)
                f.flush()
            except BaseException:
                try:
                    os.truncate(path, start)
                except OSError:
                    pass
                raise


class NullWriter:
    """The writer of ranks other than 0: accepts everything, writes nothing."""

    path = None
    errors: list[str] = []

    def submit(self, job: Job) -> None:
        pass

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass
