"""Safe, low-level reads of ``.npy`` headers and of the stored members of an ``.npz`` (zip) file.

Why not ``np.load``: it parses the zip directory with Python's zipfile, copies each member twice and
costs ~6 ms per 14-array chunk; a run of 10 000 chunks then takes a minute to read. Here a chunk costs
one ``stat``, one read of the zip's central directory, one small read per member header, and one
``preadv`` per array straight into the caller's output array.

Everything read is checked before it is trusted: only plain numeric dtypes (no object, no structured
dtypes, so nothing can unpickle), sizes that fit inside the file, and headers at most 10 000 bytes.
Zip layout: PKWARE APPNOTE 6.3.10, sections 4.3.7 (local header), 4.3.12 (central directory),
4.3.14-16 (zip64 end records), 4.5.3 (zip64 extra field).
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_HEADER = 10_000
MAX_ARRAY_BYTES = 1 << 33  # 8 GiB: larger than any array gradscope writes

_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_Z64_LOC = struct.Struct("<4sIQI")  # zip64 end-of-central-directory locator, 20 bytes
_Z64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory, 56 bytes
_CDIR = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header, 30 bytes
MAX_CDIR = 1 << 20  # a chunk has ~15 members; a 1 MiB directory is not one gradscope wrote


@dataclass(frozen=True)
class ArrayInfo:
    """Where an array's bytes lie in a file and what they are."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    nbytes: int


def open_regular(path: os.PathLike[str] | str) -> tuple[int, int]:
    """Open ``path`` for reading if it is a regular file that is not a link; return (fd, size).

    O_NOFOLLOW refuses links, O_NONBLOCK keeps a FIFO planted in the run from blocking the reader.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if os.path.islink(path):
            raise ValueError("is a symbolic link; gradscope never writes links") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise ValueError(f"is truncated (wanted {n} bytes at {offset}, got {len(data)})")
    return data


class Source:
    """Reads of one open file: from a copy of the whole file when it is small (one system call for
    the zip directory and every header), else with ``pread``."""

    WHOLE_BYTES = 1 << 20

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self.buf = pread_exact(fd, size, 0) if size <= self.WHOLE_BYTES else None

    def read(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        if self.buf is not None:
            return self.buf[offset:offset + n]
        return os.pread(self.fd, n, offset)

    def read_exact(self, n: int, offset: int) -> bytes:
        data = self.read(n, offset)
        if len(data) != n:
            raise ValueError(f"is truncated (wanted {n} bytes at {offset}, got {len(data)})")
        return data


@lru_cache(maxsize=256)
def parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool, int, int]:
    """(dtype, shape, fortran_order, header length, data bytes) of the ``.npy`` header at the start of ``head``.

    Cached: the chunks of one run repeat the same few headers thousands of times.
    """
    fp = io.BytesIO(head)
    major, _ = np.lib.format.read_magic(fp)
    if major == 1:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_HEADER)
    elif major in (2, 3):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_HEADER)
    else:
        raise ValueError(f"has an unknown .npy version {major}")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "iuf":
        raise ValueError(f"holds dtype {dtype}; gradscope writes only plain numbers (no pickles)")
    if not all(isinstance(s, int) and 0 <= s < 1 << 40 for s in shape):
        raise ValueError(f"declares an impossible shape {shape}")
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    return dtype, tuple(shape), bool(fortran), fp.tell(), nbytes


def _header_length(prefix: bytes) -> int:
    """Total length of the ``.npy`` header (magic, version, length field, dict) from its first bytes."""
    if len(prefix) < 12 or prefix[:6] != b"\x93NUMPY":
        raise ValueError("is not a .npy array (bad magic)")
    major = prefix[6]
    if major == 1:
        n = 10 + struct.unpack_from("<H", prefix, 8)[0]
    elif major in (2, 3):
        n = 12 + struct.unpack_from("<I", prefix, 8)[0]
    else:
        raise ValueError(f"has an unknown .npy version {major}")
    if n > MAX_HEADER + 12:
        raise ValueError(f"has a {n}-byte .npy header; gradscope writes ~128")
    return n


def read_npy_header(src: Source, offset: int, limit: int, head: bytes = b"") -> ArrayInfo:
    """The ``.npy`` array starting at ``offset`` whose bytes must end by ``limit``; ``head`` may hold
    bytes already read from ``offset`` on."""
    if len(head) < 16:
        head = src.read(min(256, max(0, limit - offset)), offset)
    hlen = _header_length(head)
    if hlen > len(head):
        if offset + hlen > limit:
            raise ValueError("has a truncated .npy header")
        head = src.read_exact(hlen, offset)
    try:
        dtype, shape, fortran, parsed, nbytes = parse_header(head[:hlen])
    except Exception as exc:  # numpy's header parser raises SyntaxError, TokenError, ... on junk
        raise ValueError(f"has a corrupt .npy header ({type(exc).__name__}: {exc})") from None
    info = ArrayInfo(offset + hlen, dtype, shape, fortran, nbytes)
    if parsed != hlen or nbytes > MAX_ARRAY_BYTES or info.offset + nbytes > limit:
        raise ValueError(f"declares shape {shape} ({nbytes} bytes), more than the file holds")
    return info


def _end_records(src: Source) -> tuple[int, int, bytes]:
    """(entries, central directory offset, central directory bytes) from the zip's end records."""
    size = src.size
    tail_len = min(size, 4096)  # holds the whole directory of a chunk RunWriter wrote
    tail = src.read_exact(tail_len, size - tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 and tail_len < size:  # a long zip comment: look further back
        tail_len = min(size, _EOCD.size + 65535)
        tail = src.read_exact(tail_len, size - tail_len)
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise ValueError("is not a complete zip file (no end record): a partial chunk")
    _, disk, cd_disk, _, entries, cd_size, cd_off, _ = _EOCD.unpack_from(tail, pos)
    if disk or cd_disk:
        raise ValueError("is a multi-disk zip file")
    if 0xFFFF in (entries,) or 0xFFFFFFFF in (cd_size, cd_off):
        loc_at = pos - _Z64_LOC.size
        if loc_at < 0 or tail[loc_at:loc_at + 4] != b"PK\x06\x07":
            raise ValueError("has a corrupt zip64 end record")
        _, _, z64_off, _ = _Z64_LOC.unpack_from(tail, loc_at)
        rec = src.read_exact(_Z64_EOCD.size, z64_off) if z64_off + _Z64_EOCD.size <= size else b""
        if rec[:4] != b"PK\x06\x06":
            raise ValueError("has a corrupt zip64 end record")
        _, _, _, _, _, _, _, entries, cd_size, cd_off = _Z64_EOCD.unpack(rec)
    if cd_size > MAX_CDIR or cd_off + cd_size > size or entries > MAX_CDIR // _CDIR.size:
        raise ValueError("has an impossible zip directory")
    tail_off = size - tail_len
    cdir = tail[cd_off - tail_off:cd_off - tail_off + cd_size] if cd_off >= tail_off else b""
    return entries, cd_off, cdir if len(cdir) == cd_size else src.read_exact(cd_size, cd_off)


def _zip64_extra(extra: bytes, usize: int, csize: int, lho: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4:i + 4 + n]
        if tag == 1:
            vals = [struct.unpack_from("<Q", body, 8 * k)[0] for k in range(len(body) // 8)]
            if usize == 0xFFFFFFFF and vals:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF and vals:
                csize = vals.pop(0)
            if lho == 0xFFFFFFFF and vals:
                lho = vals.pop(0)
        i += 4 + n
    return usize, csize, lho


def zip_arrays(src: Source) -> dict[str, ArrayInfo]:
    """Every stored (uncompressed) ``NAME.npy`` member of the zip file ``src``: name -> ArrayInfo.

    Raises ValueError for a compressed or encrypted member (``np.savez_compressed``): the caller may
    read such a file the slow way.
    """
    entries, _, cdir = _end_records(src)
    size = src.size
    out: dict[str, ArrayInfo] = {}
    pos = 0
    for _ in range(entries):
        if cdir[pos:pos + 4] != b"PK\x01\x02":
            raise ValueError("has a corrupt zip directory")
        f = _CDIR.unpack_from(cdir, pos)
        flags, method, csize, usize, nlen, elen, clen, lho = f[3], f[4], f[8], f[9], f[10], f[11], f[12], f[16]
        name = cdir[pos + 46:pos + 46 + nlen].decode("utf-8", "replace")
        usize, csize, lho = _zip64_extra(cdir[pos + 46 + nlen:pos + 46 + nlen + elen], usize, csize, lho)
        pos += 46 + nlen + elen + clen
        if not name.endswith(".npy"):
            continue
        if method != 0 or flags & 1:
            raise CompressedChunk(f"member {name!r} is compressed or encrypted")
        if lho + _LOCAL.size > size:
            raise ValueError(f"member {name!r} lies outside the file")
        block = src.read(512, lho)  # local header, name, extra field and .npy header at once
        if len(block) < _LOCAL.size or block[:4] != b"PK\x03\x04":
            raise ValueError(f"member {name!r} has a corrupt local header")
        local = _LOCAL.unpack_from(block)
        skip = _LOCAL.size + local[9] + local[10]
        start = lho + skip
        end = start + usize
        if usize != csize or end > size:
            raise ValueError(f"member {name!r} declares {usize} bytes, more than the file holds")
        info = read_npy_header(src, start, end, block[skip:skip + usize])
        if info.offset + info.nbytes != end:
            raise ValueError(f"member {name!r}: its header's shape does not match its size")
        out[name[:-4]] = info
    return out


class CompressedChunk(ValueError):
    """A zip member that is deflated or encrypted: not what RunWriter writes, read the slow way."""


def read_into(fd: int, info: ArrayInfo, dest: np.ndarray) -> None:
    """Read the array ``info`` into ``dest`` (same shape). Straight into ``dest`` when its memory is one
    C-contiguous block of the same dtype; otherwise through a temporary array, converting."""
    if dest.shape != info.shape:
        raise ValueError(f"shape {info.shape} does not fit {dest.shape}")
    if dest.dtype == info.dtype and not info.fortran and dest.flags.c_contiguous:
        target = dest
    else:
        target = np.empty(info.shape, info.dtype, order="F" if info.fortran else "C")
    if info.nbytes:
        got = os.preadv(fd, [memoryview(target.reshape(-1, order="A")).cast("B")], info.offset)
        if got != info.nbytes:
            raise ValueError(f"is truncated (read {got} of {info.nbytes} bytes)")
    if target is not dest:
        dest[...] = target


def from_buffer(buf: bytes, info: ArrayInfo) -> np.ndarray:
    """The array ``info`` as a read-only view of ``buf`` (the whole file, read at once)."""
    if info.offset + info.nbytes > len(buf):
        raise ValueError("is truncated")
    count = info.nbytes // info.dtype.itemsize
    flat = np.frombuffer(buf, info.dtype, count, info.offset)
    return flat.reshape(info.shape, order="F" if info.fortran else "C")
