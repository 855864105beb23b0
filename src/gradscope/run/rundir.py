"""Which files of a directory are gradscope's, the claim of a run directory, and clearing a run.

gradscope never deletes or reuses what it did not write. A directory is *free* when none of the names
gradscope writes exist in it; it is a *run* when its manifest.json is gradscope's own (format
``gradscope-run`` and an integer schema); anything else that uses one of those names is *foreign*.
A run being written is *claimed*: ``RUN/.gradscope-lock`` is created atomically (an exclusive create)
and holds an ``flock`` for as long as the writing Scope lives, so a second writer fails at once, and
a lock left by a killed process is known to be stale (the kernel dropped its flock).
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import time
from pathlib import Path

from gradscope.run import format as fmt
from gradscope.run import merged

try:  # POSIX; elsewhere the claim is the exclusive create alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".gradscope-lock"
OWN_NAMES = (fmt.MANIFEST, fmt.EVENTS, fmt.CHUNK_DIR, fmt.TB_DIR, merged.DIR, LOCK)
WRITTEN_DIRS = (fmt.CHUNK_DIR, merged.DIR, fmt.TB_DIR)
MAX_MANIFEST_BYTES = 64 << 20
_CHUNK_FILE = re.compile(r"^\.?\d{6,12}" + re.escape(fmt.CHUNK_SUFFIX) + r"(\.tmp\d+)?$")
_TOP_TMP = re.compile(r"^\.(manifest\.json)\.tmp\d+$")
MERGED_FILE = re.compile(r"^(\d{3,6}\.[0-9a-f]{8,32}\.npy|index\.json|\.index\.json\.tmp\d+)$")
_TB_FILE = re.compile(r"^events\.out\.tfevents\.")


class RunDirInUse(FileExistsError):
    """Another live Scope writes this directory."""


def is_gradscope_manifest(path: Path) -> bool:
    """True when ``path/manifest.json`` is a regular file holding gradscope's own manifest."""
    from gradscope.run.npyfile import open_regular

    try:
        fd, size = open_regular(path / fmt.MANIFEST)
    except (OSError, ValueError):
        return False
    try:
        if size > MAX_MANIFEST_BYTES:
            return False
        raw = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == "gradscope-run"
            and isinstance(manifest.get("schema"), int) and isinstance(manifest.get("rows"), list))


def state(path: Path, ours: DirClaim | None = None) -> str:
    """``free``, ``live`` (claimed by a Scope now), ``run`` (a gradscope run) or ``foreign``.

    Raises NotADirectoryError when ``path`` exists and is not a directory.
    """
    if not os.path.lexists(path):
        return "free"
    if not path.is_dir():
        raise NotADirectoryError(f"log_dir {path} exists and is not a directory: choose another log_dir")
    present = [n for n in OWN_NAMES if os.path.lexists(path / n)]
    if ours is None and LOCK in present and lock_held(path / LOCK):
        return "live"
    present = [n for n in present if n != LOCK]
    if not present:
        return "free"
    return "run" if is_gradscope_manifest(path) else "foreign"


def lock_held(lock: Path) -> bool:
    """True when a live process holds the flock of ``lock``."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return os.path.lexists(lock)  # a link or an unreadable lock: treat it as held
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock
    return False


def _owner(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8")[:4096])
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class DirClaim:
    """The claim of one run directory; ``release`` (at close) removes the lock file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, path: Path) -> DirClaim:
        """Claim ``path`` (created if missing). Raises RunDirInUse when a live Scope holds it."""
        path.mkdir(parents=True, exist_ok=True)
        lock = path / LOCK
        tmp = path / f".gradscope-lock.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh inode: never contended
            try:  # who holds it, for the message of a second writer (not needed for the claim)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                         "started": time.time()}).encode())
            except OSError:  # a full disk
                pass
            cls._publish(tmp, lock)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(path, fd)

    @staticmethod
    def _publish(tmp: Path, lock: Path) -> None:
        """Put the locked ``tmp`` in place as ``lock``: an exclusive link, or over a stale lock."""
        for _ in range(20):
            try:
                os.link(tmp, lock)  # atomic: fails when a lock is there
                tmp.unlink()
                return
            except FileExistsError:
                pass
            except OSError:  # no hard links on this filesystem: an existence check, then the rename
                if not os.path.lexists(lock):
                    os.replace(tmp, lock)
                    return
            probe = _hold_stale(lock)
            if probe is None:
                continue  # the lock changed while we looked: look again
            try:
                os.replace(tmp, lock)  # we hold the stale lock's flock: nobody else replaces it now
                return
            finally:
                os.close(probe)
        raise RunDirInUse(f"log_dir {lock.parent}: could not claim it (its lock keeps changing)")

    def release(self) -> None:
        """Remove the lock (when it is still ours) and drop its flock."""
        if self._fd is None:
            return
        try:
            lock = self.path / LOCK
            if os.stat(lock, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                lock.unlink()
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


def _hold_stale(lock: Path) -> int | None:
    """An fd holding the flock of a stale ``lock``; None when ``lock`` changed while we looked.
    Raises RunDirInUse when a live Scope holds it."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        same = os.stat(lock, follow_symlinks=False).st_ino == st.st_ino
    except FileNotFoundError:
        same = False
    except OSError:
        os.close(fd)
        raise RunDirInUse(f"log_dir {lock.parent} is being written by another gradscope.watch() "
                          f"({_owner(lock)}): give each run its own log_dir") from None
    if not same:
        os.close(fd)
        return None
    return fd


def refuse_links(path: Path) -> None:
    """Raise when a directory gradscope writes inside ``path`` is a link or not a directory."""
    for name in WRITTEN_DIRS:
        p = path / name
        if os.path.islink(p):
            raise FileExistsError(f"{p} is a symbolic link; gradscope never writes or deletes through "
                                  "links: remove the link or choose another log_dir")
        if os.path.lexists(p) and not p.is_dir():
            raise FileExistsError(f"{p} is not a directory; gradscope writes a directory there: remove it "
                                  "or choose another log_dir")


def clear_run(path: Path) -> None:
    """Remove gradscope's own files of the run at ``path`` (proven by its manifest), nothing else.

    Raises OSError naming what could not be removed, so a half-cleared run never mixes into a new one.
    """
    if not is_gradscope_manifest(path):
        raise FileExistsError(f"{path} is not a gradscope run; gradscope clears only its own runs")
    refuse_links(path)
    failed: list[str] = []

    def remove(p: Path) -> None:
        try:
            if p.is_file() or os.path.islink(p):
                p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed.append(f"{p} ({exc.strerror or exc})")

    for sub, pattern in ((fmt.CHUNK_DIR, _CHUNK_FILE), (merged.DIR, MERGED_FILE)):
        if (path / sub).is_dir():
            for entry in os.scandir(path / sub):
                if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                    remove(Path(entry.path))
    if (path / fmt.TB_DIR).is_dir():
        for root, _dirs, files in os.walk(path / fmt.TB_DIR):  # os.walk does not follow links
            for name in files:
                if _TB_FILE.match(name):
                    remove(Path(root) / name)
    for entry in os.scandir(path):
        if _TOP_TMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            remove(Path(entry.path))
    remove(path / fmt.EVENTS)
    if not failed:  # the manifest goes last: until then the directory is still provably a run
        remove(path / fmt.MANIFEST)
    if failed:
        raise OSError(f"could not clear the old run in {path}: {'; '.join(failed[:3])}"
                      f"{' ...' if len(failed) > 3 else ''}; remove these files, or choose another log_dir")
    for sub in (merged.DIR, fmt.CHUNK_DIR):
        try:
            (path / sub).rmdir()  # only when empty: files gradscope did not write stay
        except OSError:
            pass
