"""Real faults for the hardening tests: a small tmpfs that a test can fill up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 4 MiB tmpfs mounted for this test (a real disk that fills up); skipped where mounting is not
    permitted (the injected-OSError variants of the same tests always run)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux; the injected-OSError variant covers CI")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); the injected-OSError "
                    "variant covers this")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
