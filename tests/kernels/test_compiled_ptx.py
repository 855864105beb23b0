"""The kernels compiled for sm_90 (no GPU needed): every variant the launchers use compiles (the
interpreter does not type-check like the compiler), the aligned fast path uses 16-byte vector accesses,
the fallback for unaligned tensors does not (negative control)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_ptx.py"


def test_every_variant_compiles_and_aligned_paths_use_vector_accesses():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}  # compile, do not interpret
    cmd = [sys.executable, str(SCRIPT), "90", "--all"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout)
    assert len(facts.pop("compiled")) == 18 + 3 + 16  # partials, scale, both finalize kernels
    for dt in ("fp32", "bf16"):
        assert "ld.global.v4.b32" in facts[f"partials {dt} aligned=True"]["loads"]
        assert "ld.global.v4.b32" in facts[f"scale {dt} aligned=True"]["loads"]
        assert "st.global.v4.b32" in facts[f"scale {dt} aligned=True"]["stores"]
        for kernel in ("partials", "scale"):  # unaligned: scalar accesses only (still correct, slower)
            accesses = facts[f"{kernel} {dt} aligned=False"]
            assert not any(".v2" in a or ".v4" in a for a in accesses["loads"] + accesses["stores"]), accesses
