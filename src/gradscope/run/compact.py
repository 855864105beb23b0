"""compact_run: merge a run's chunks into one ``.npy`` per array under ``RUN/merged/`` (see merged.py).

Called by RunWriter.close(); safe to call on any run, also one read by others at the same time or
one from a killed process. Order of work, so that a crash at any moment leaves a readable run with
every flushed step: (1) write the new arrays under a fresh token, fsync them; (2) write the index to a
temporary name, fsync, rename it over the old one, fsync the directory; (3) only then delete the files
of the previous token. Chunks are kept (the merged arrays are a read cache of them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gradscope.run import chunks as chunks_mod
from gradscope.run import format as fmt
from gradscope.run import merged
from gradscope.run.reader import RunError, _read_manifest, _started, check_size, open_checked_merged, spec_bytes

BLOCK_BYTES = 64 << 20  # rows are written in blocks of about this size


def compact_run(path: str | os.PathLike[str]) -> bool:
    """Merge every chunk newer than the merged arrays into new merged arrays; True when it wrote them.

    Does nothing (False) when there is nothing new, or when a chunk cannot be read: a damaged run is
    left exactly as it is for ``load_run`` to report. Raises RunError when ``path`` is not a run.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    try:
        rows = [fmt.Row.from_json(r) for r in manifest["rows"]]
    except ValueError as exc:
        raise RunError(f"{path / fmt.MANIFEST}: {exc}; the manifest is corrupt") from exc
    widths = {k: sum(r.kind == k for r in rows) for k in fmt.KINDS}
    started = _started(manifest)
    try:
        old = open_checked_merged(path, manifest, widths)
    except (OSError, ValueError):
        old = None  # rebuilt from the chunks, which are all still there
    files = [(i, f) for i, f in chunks_mod.list_chunks(path / fmt.CHUNK_DIR) if old is None or i >= old.upto]
    if not files:
        return False
    try:
        tail = [chunks_mod.scan_chunk(f, i, widths) for i, f in files]
    except (OSError, ValueError):
        return False
    spec = _spec(old, tail, widths)
    held = [c.path for c in tail] + ([path / merged.DIR / n for n in old.names.values()] if old else [])
    check_size(path, spec_bytes({k: (shape, dtype) for k, (shape, dtype) in spec.items()}), held)
    out_dir = path / merged.DIR
    _check_out_dir(out_dir)
    out_dir.mkdir(exist_ok=True)
    token = os.urandom(6).hex()
    names = {key: f"{i:03d}.{token}.npy" for i, key in enumerate(sorted(spec))}
    try:
        _write_arrays(out_dir, names, spec, old, tail)
    except BaseException:
        for name in names.values():
            (out_dir / name).unlink(missing_ok=True)
        raise
    n = spec["step"][0][0]
    index = {"format": merged.FORMAT, "version": merged.VERSION, "steps": n,
             "chunks_upto": tail[-1].index + 1, "started": started, "arrays": names}
    _publish(out_dir, json.dumps(index, indent=1))
    _remove_unlisted(out_dir, set(names.values()))
    return True


def _check_out_dir(out_dir: Path) -> None:
    """RUN/merged must be gradscope's own: a real directory (no link) holding only merged files."""
    from gradscope.run.rundir import MERGED_FILE

    if os.path.islink(out_dir):
        raise RunError(f"{out_dir} is a symbolic link; gradscope never writes or deletes through links: "
                       "remove the link (the run reads from its chunks meanwhile)")
    if not os.path.lexists(out_dir):
        return
    if not out_dir.is_dir():
        raise RunError(f"{out_dir} is not a directory: move it away to let gradscope merge the run")
    foreign = sorted(e.name for e in os.scandir(out_dir) if not MERGED_FILE.match(e.name))
    if foreign:
        raise RunError(f"{out_dir} holds files gradscope did not write ({', '.join(foreign[:3])}): move them "
                       "away to let gradscope merge the run (it reads from its chunks meanwhile)")


def _spec(old: merged.Merged | None, tail: list[chunks_mod.Chunk],
          widths: dict[str, int]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of every merged array: the old arrays' keys and the chunks' keys."""
    head = 0 if old is None else old.steps
    layout = chunks_mod.layout(tail, widths)
    keys = {k for k in layout if k == "step" or k.startswith("scalar/")}
    keys |= {k for c in tail for k in (c.arrays if c.loaded is None else c.loaded) if "/" in k}
    keys |= set(old.arrays) if old is not None else set()
    n = head + layout["step"][0][0]
    spec = {}
    for key in keys:
        kind = key.split("/")[0]
        shape = (n, widths[kind]) if kind in widths else (n,)
        spec[key] = (shape, np.dtype(np.int64) if key == "step" else np.dtype(np.float32))
    return spec


def _write_arrays(out_dir: Path, names: dict[str, str], spec: dict[str, Any],
                  old: merged.Merged | None, tail: list[chunks_mod.Chunk]) -> None:
    files: dict[str, BinaryIO] = {}
    try:
        for key, name in names.items():
            shape, dtype = spec[key]
            f = open(out_dir / name, "wb")  # noqa: SIM115 (closed below, all together)
            files[key] = f
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
        if old is not None:
            _copy_head(files, spec, old)
        row_bytes = sum(int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                        for shape, dtype in spec.values())
        for batch in _batches(tail, max(1, BLOCK_BYTES // max(row_bytes, 1))):
            t = sum(c.steps for c in batch)
            out = {k: np.full((t,) + shape[1:], np.nan if dtype.kind == "f" else 0, dtype)
                   for k, (shape, dtype) in spec.items()}
            failed = chunks_mod.fill(batch, out)
            if failed:
                raise ValueError(f"{failed[0][0].path}: {failed[0][1]}")
            for key, f in files.items():
                f.write(memoryview(np.ascontiguousarray(out[key])).cast("B"))
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the index that names it
    finally:
        for f in files.values():
            f.close()


def _copy_head(files: dict[str, BinaryIO], spec: dict[str, Any], old: merged.Merged) -> None:
    """The previously merged rows, in blocks, NaN-padded to the current width."""
    for key, f in files.items():
        shape, dtype = spec[key]
        src = old.arrays.get(key)
        step = max(1, BLOCK_BYTES // max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize))
        for r in range(0, old.steps, step):
            block = np.full((min(step, old.steps - r),) + shape[1:], np.nan if dtype.kind == "f" else 0, dtype)
            if src is not None:
                part = src[r:r + block.shape[0]]
                (block[:, : part.shape[1]] if part.ndim == 2 else block)[...] = part
            f.write(memoryview(block).cast("B"))


def _batches(tail: list[chunks_mod.Chunk], rows: int) -> list[list[chunks_mod.Chunk]]:
    out: list[list[chunks_mod.Chunk]] = [[]]
    n = 0
    for c in tail:
        if out[-1] and n + c.steps > rows:
            out.append([])
            n = 0
        out[-1].append(c)
        n += c.steps
    return [b for b in out if b]


def _publish(out_dir: Path, text: str) -> None:
    tmp = out_dir / f".{merged.INDEX}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / merged.INDEX)
    try:
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory


def _remove_unlisted(out_dir: Path, keep: set[str]) -> None:
    """Delete merged arrays of earlier tokens (and arrays of a compaction that was killed)."""
    for entry in os.scandir(out_dir):
        if entry.name not in keep and (merged.DATA_RE.match(entry.name) or entry.name.startswith(".index")):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
