"""The kernels compiled for sm_90 (no GPU needed): the aligned fast path uses 16-byte vector accesses,
the fallback for unaligned tensors does not (negative control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_ptx.py"


def test_aligned_paths_compile_to_vector_loads_and_stores():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}  # compile, do not interpret
    done = subprocess.run([sys.executable, str(SCRIPT), "90"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout)
    for dt in ("fp32", "bf16"):
        assert "ld.global.v4.b32" in facts[f"partials {dt} aligned=True"]["loads"]
        assert "ld.global.v4.b32" in facts[f"scale {dt} aligned=True"]["loads"]
        assert "st.global.v4.b32" in facts[f"scale {dt} aligned=True"]["stores"]
        for kernel in ("partials", "scale"):  # unaligned: scalar accesses only (still correct, slower)
            accesses = facts[f"{kernel} {dt} aligned=False"]
            assert not any(".v2" in a or ".v4" in a for a in accesses["loads"] + accesses["stores"]), accesses
