"""Reading the per-flush chunks of a run: scan every chunk's layout, allocate once, fill in place.

Two passes. ``scan_chunk`` reads only a chunk's zip directory and array headers and checks them
against the manifest; ``fill`` then reads each array straight into its rows of the preallocated
[steps x rows] outputs, from a few threads (the reads release the GIL). Peak memory is the size of
the run, not two or three times it as with load-then-concatenate.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradscope.run import format as fmt
from gradscope.run import npyfile

_CHUNK_RE = re.compile(r"^(\d{1,12})" + re.escape(fmt.CHUNK_SUFFIX) + "$")
_PREFIXES = ("param/", "act/", "flow/", "scalar/")
THREADS = max(1, min(4, os.cpu_count() or 1))
WHOLE_READ_BYTES = 4 << 20


@dataclass
class Chunk:
    """One chunk file, scanned: its steps and where each wanted array lies."""

    path: Path
    index: int
    steps: int
    arrays: dict[str, npyfile.ArrayInfo] = field(default_factory=dict)
    loaded: dict[str, np.ndarray] | None = None  # a compressed chunk, read whole by np.load
    size: int = 0

    def layout_key(self) -> tuple | None:
        """Equal for chunks whose bytes lie at the same places (every full chunk of one run); None
        when the chunk cannot be read in a group."""
        if self.loaded is not None or self.size > WHOLE_READ_BYTES or any(a.fortran for a in self.arrays.values()):
            return None
        return (self.size, self.steps, tuple((k, a.offset, a.dtype.str, a.shape) for k, a in self.arrays.items()))


def list_chunks(chunk_dir: Path) -> list[tuple[int, Path]]:
    """(index, path) of every ``NNNNNN.npz`` in ``chunk_dir``, by index; other names are ignored."""
    if not chunk_dir.is_dir():
        return []
    found = []
    with os.scandir(chunk_dir) as it:
        for entry in it:
            m = _CHUNK_RE.match(entry.name)
            if m:
                found.append((int(m.group(1)), chunk_dir / entry.name))
    return sorted(found)


def wanted(key: str) -> bool:
    if key == "step" or key.startswith("scalar/"):
        return True
    kind, _, name = key.partition("/")
    return name in fmt.METRICS.get(kind, ())


def check(shapes: dict[str, tuple[tuple[int, ...], np.dtype]], widths: dict[str, int]) -> int:
    """Validate a chunk's arrays against each other and the manifest; return its number of steps."""
    step = shapes.get("step")
    if step is None or len(step[0]) != 1 or step[1].kind not in "iu":
        raise ValueError("has no 1-D integer 'step' array")
    t = step[0][0]
    for key, (shape, dtype) in shapes.items():
        if key == "step":
            continue
        if dtype.kind != "f":
            raise ValueError(f"array {key!r} has dtype {dtype}, expected float")
        want_ndim = 1 if key.startswith("scalar/") else 2
        if len(shape) != want_ndim or shape[0] != t:
            raise ValueError(f"array {key!r} has shape {shape}, expected {t} steps")
        if want_ndim == 2 and shape[1] > widths.get(key.split("/")[0], 0):
            raise ValueError(f"is wider than the manifest's rows ({key!r} has {shape[1]} columns)")
    return t


def scan_chunk(path: Path, index: int, widths: dict[str, int]) -> Chunk:
    """Read the layout of one chunk. Raises ValueError/OSError for anything gradscope did not write."""
    fd, size = npyfile.open_regular(path)
    try:
        if size > npyfile.MAX_ARRAY_BYTES:
            raise ValueError(f"is {size} bytes, larger than any chunk gradscope writes")
        try:
            infos = {k: v for k, v in npyfile.zip_arrays(npyfile.Source(fd, size)).items() if wanted(k)}
        except npyfile.CompressedChunk:
            try:
                return _load_compressed(path, index, widths)
            except (OSError, ValueError, MemoryError):
                raise
            except Exception as exc:  # zlib.error, NotImplementedError, ...: a damaged zip
                raise ValueError(f"is a damaged compressed chunk ({type(exc).__name__}: {exc})") from None
    finally:
        os.close(fd)
    t = check({k: (v.shape, v.dtype) for k, v in infos.items()}, widths)
    return Chunk(path, index, t, infos, size=size)


def _load_compressed(path: Path, index: int, widths: dict[str, int]) -> Chunk:
    """A deflated chunk (np.savez_compressed): the slow, safe way, with the same checks."""
    loaded: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            if not wanted(key):
                continue
            info = z.zip.getinfo(key + ".npy")
            if info.file_size > npyfile.MAX_ARRAY_BYTES:
                raise ValueError(f"array {key!r} declares {info.file_size} bytes")
            loaded[key] = z[key]
    t = check({k: (v.shape, v.dtype) for k, v in loaded.items()}, widths)
    return Chunk(path, index, t, {}, loaded)


def _fill_one(chunk: Chunk, out: dict[str, np.ndarray], row0: int) -> None:
    rows = slice(row0, row0 + chunk.steps)
    if chunk.loaded is not None:
        for key, arr in chunk.loaded.items():
            dest = out[key][rows]
            (dest[:, : arr.shape[1]] if arr.ndim == 2 else dest)[...] = arr
        return
    fd, size = npyfile.open_regular(chunk.path)
    try:
        # Small chunks: one read of the whole file beats one read per array; large ones: straight in.
        buf = npyfile.pread_exact(fd, size, 0) if size <= WHOLE_READ_BYTES else None
        for key, info in chunk.arrays.items():
            dest = out[key][rows]
            dest = dest[:, : info.shape[1]] if dest.ndim == 2 else dest
            if buf is None:
                npyfile.read_into(fd, info, dest)
            else:
                dest[...] = npyfile.from_buffer(buf, info)
    finally:
        os.close(fd)


def layout(chunks: list[Chunk], widths: dict[str, int]) -> dict[str, tuple[tuple[int, ...], np.dtype, bool]]:
    """Output arrays for ``chunks``: key -> (shape, dtype, complete), ``complete`` when every chunk fills
    every cell (the array need not be pre-filled with NaN)."""
    n = sum(c.steps for c in chunks)
    out: dict[str, tuple[tuple[int, ...], np.dtype, bool]] = {"step": ((n,), np.dtype(np.int64), True)}
    for kind, names in fmt.METRICS.items():
        for name in names:
            key = fmt.metric_key(kind, name)
            full = all(_width(c, key) == widths[kind] for c in chunks)
            out[key] = ((n, widths[kind]), np.dtype(np.float32), full)
    scalars = sorted({k for c in chunks for k in (c.loaded or c.arrays) if k.startswith("scalar/")})
    for key in scalars:
        out[key] = ((n,), np.dtype(np.float32), all(key in (c.loaded or c.arrays) for c in chunks))
    return out


def _width(chunk: Chunk, key: str) -> int:
    arrays = chunk.loaded if chunk.loaded is not None else chunk.arrays
    a = arrays.get(key)
    return -1 if a is None else a.shape[1]


def allocate(spec: dict[str, tuple[tuple[int, ...], np.dtype, bool]], prefilled: bool = False) -> dict[str, np.ndarray]:
    """Output arrays for ``layout``'s spec: empty where every cell will be written, NaN elsewhere."""
    return {k: np.empty(shape, dtype) if complete and not prefilled else np.full(shape, np.nan, dtype)
            for k, (shape, dtype, complete) in spec.items()}


def _groups(chunks: list[Chunk], most: int = 64) -> list[list[int]]:
    """Runs of consecutive chunks with the same layout (at most ``most``), singletons otherwise."""
    groups: list[list[int]] = []
    prev = None
    for i, c in enumerate(chunks):
        key = c.layout_key()
        if key is not None and key == prev and len(groups[-1]) < most:
            groups[-1].append(i)
        else:
            groups.append([i])
        prev = key
    return groups


def _fill_group(group: list[Chunk], out: dict[str, np.ndarray], row0: int) -> None:
    """Chunks of one layout: read each file whole into a row of one buffer, then one strided copy per
    array for the whole group (instead of one per array and chunk)."""
    first = group[0]
    buf = np.empty((len(group), first.size), np.uint8)
    for i, c in enumerate(group):
        fd, size = npyfile.open_regular(c.path)
        try:
            if size != first.size or os.preadv(fd, [memoryview(buf[i])], 0) != size:
                raise ValueError("changed while being read")
        finally:
            os.close(fd)
    k, t = len(group), first.steps
    for key, info in first.arrays.items():
        src = buf[:, info.offset:info.offset + info.nbytes].view(info.dtype).reshape((k,) + info.shape)
        dest = out[key][row0:row0 + k * t].reshape((k, t) + out[key].shape[1:])
        (dest[..., : info.shape[1]] if dest.ndim == 3 else dest)[...] = src


def fill(chunks: list[Chunk], out: dict[str, np.ndarray], row0: int = 0) -> list[tuple[Chunk, Exception]]:
    """Read every chunk into its rows of ``out`` starting at ``row0``; return the chunks that failed
    (their rows are left as they were)."""
    starts, r = [], row0
    for c in chunks:
        starts.append(r)
        r += c.steps
    failed: list[tuple[Chunk, Exception]] = []

    def one(i: int) -> None:
        try:
            _fill_one(chunks[i], out, starts[i])
        except Exception as exc:  # whatever a damaged file raises, only this chunk is lost
            failed.append((chunks[i], exc))

    def group(idx: list[int]) -> None:
        if len(idx) > 1:
            try:
                _fill_group([chunks[i] for i in idx], out, starts[idx[0]])
                return
            except Exception:  # noqa: BLE001 (one chunk of the group is bad: read them one by one)
                pass
        for i in idx:
            one(i)

    groups = _groups(chunks)
    if len(groups) > 2 and THREADS > 1:
        try:
            with ThreadPoolExecutor(THREADS, thread_name_prefix="gradscope-read") as pool:
                list(pool.map(group, groups))
            return failed
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown": a Scope closed
            pass  # at exit; map() submits before anything runs (group() raises nothing), so read serially
    for g in groups:
        group(g)
    return failed
