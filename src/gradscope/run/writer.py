"""RunWriter: writes manifest, chunks and events of a run directory from a background thread.

Every file is written to a temporary name and renamed, so a reader (or a crash) never sees half a
chunk. A failing disk never stops training: the first error is warned about once, later writes are
still tried, so recording resumes when the disk recovers. ``close`` merges the chunks into
RUN/merged/ (compact.py), so that reading the run is one memory map per array.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
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
    """Chunks below this index are covered by RUN/merged/; a merged directory left without a manifest
    (``watch(..., overwrite=True)`` clears the old run but not merged/) is stale and is removed."""
    if not (path / merged.DIR).is_dir():
        return 0
    if not (path / fmt.MANIFEST).exists():
        shutil.rmtree(path / merged.DIR, ignore_errors=True)
        return 0
    try:
        index = merged.read_index(path)
    except (OSError, ValueError):
        return 0
    return 0 if index is None else int(index["chunks_upto"])


class RunWriter:
    """Owns one run directory; ``submit`` queues work for the writer thread, ``close`` drains it."""

    def __init__(self, path: str | os.PathLike[str], sinks: list[Any] | None = None,
                 compact: bool = True) -> None:
        self.path = Path(path)
        self.compact = compact
        self.sinks = list(sinks or [])
        self.errors: list[str] = []
        self._warned = False
        self._lock = threading.Lock()
        self._chunk_index = 0
        self._wrote_chunks = False
        try:
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

    def _fail(self, msg: str) -> None:
        with self._lock:
            self.errors.append(msg)
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"gradscope could not write the run at {self.path} ({msg}); training continues and "
                    "writing is retried at each flush. Check free space and permissions of log_dir.",
                    RuntimeWarning,
                    stacklevel=2,
                )

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

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            if self.compact and self._wrote_chunks and not self.errors:
                self._compact()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self._fail(f"sink {type(sink).__name__}: {exc}")

    def _compact(self) -> None:
        """Merge the chunks into RUN/merged/ so that reading the run later is one memory map per array."""
        from gradscope.run.compact import compact_run

        try:
            compact_run(self.path)
        except Exception as exc:  # the chunks are complete without it: report, never raise
            self._fail(f"compacting the chunks: {type(exc).__name__}: {exc}")

    # -- work items (run on the writer thread) ---------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1, allow_nan=False)
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / fmt.MANIFEST, lambda f: f.write(text), mode="w")
        for sink in self.sinks:
            sink.write_manifest(manifest)

    def write_chunk(self, arrays: dict[str, np.ndarray]) -> None:
        chunk_dir = self.path / fmt.CHUNK_DIR
        chunk_dir.mkdir(parents=True, exist_ok=True)
        name = chunk_dir / fmt.chunk_name(self._chunk_index)
        _atomic_write(name, lambda f: np.savez(f, **arrays))
        self._chunk_index += 1
        self._wrote_chunks = True
        for sink in self.sinks:
            sink.write_chunk(arrays)

    def write_events(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        text = "".join(json.dumps(e, allow_nan=True) + "\n" for e in events)
        # One append of whole lines; a crash can leave at most a torn last line, which readers skip.
        with open(self.path / fmt.EVENTS, "a", encoding="utf-8") as f:
            f.write(text)
        for sink in self.sinks:
            sink.write_events(events)


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
