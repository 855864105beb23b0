"""Tiny hostile run directories: bounded memory, no traceback, no hang (items 8, 11 of issue 12).

Each `gradscope analyze` runs in a child process under an address-space limit, so a regression shows
as a MemoryError traceback instead of taking the machine's memory; its peak RSS is checked too.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hardening_helpers import child_env, tiny_model, train

import gradscope

LIMIT = 3 << 30  # address space of the child (torch alone maps ~1.5 GiB of it)
ANALYZE = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from gradscope.cli import main
    try:
        main(sys.argv[1:])
    finally:
        print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
""")


def analyze(*args: str, timeout: float = 120) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of `gradscope analyze ARGS` in a child."""
    code = ANALYZE.format(limit=LIMIT)
    done = subprocess.run([sys.executable, "-c", code, "analyze", *args], capture_output=True, text=True,
                          env=child_env(), timeout=timeout, check=False)
    rss = [int(line.split()[1]) * 1024 for line in done.stderr.splitlines() if line.startswith("MAXRSS")]
    return done.returncode, done.stdout, done.stderr, rss[0] if rss else -1


@pytest.fixture
def run_dir(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=4, tensorboard=False,
                         flush_seconds=None) as scope:  # two chunks of 4: chunk 2 is new
        train(model, opt, 8, scope=scope)
    return tmp_path / "run"


def test_sparse_merged_array_declaring_a_huge_run_is_a_clear_error(run_dir):
    """Item 8: merged/ names one sparse step array of 150 M steps (56 KB on disk): exit 2, < 1 GB."""
    index = json.loads((run_dir / "merged" / "index.json").read_text())
    steps = 150_000_000
    name = "000.0123456789abcdef.npy"
    with open(run_dir / "merged" / name, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (steps,)})
        f.truncate(f.tell() + 8 * steps)  # a hole: the file declares 1.2 GB and holds a few KB
    index.update(steps=steps, arrays={"step": name})
    (run_dir / "merged" / "index.json").write_text(json.dumps(index))
    assert sum(p.stat().st_blocks * 512 for p in run_dir.rglob("*") if p.is_file()) < 200_000
    code, out, err, rss = analyze(str(run_dir))
    assert code == 2, err
    assert "Traceback" not in err and "not a run gradscope wrote" in err
    assert 0 < rss < 1 << 30, rss


def test_many_empty_event_lines_are_bounded(run_dir):
    """Item 8: 64 MB of `{}` lines read in bounded memory; the run is analysed, with a warning."""
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(b"{}\n" * ((64 << 20) // 3))
    code, out, err, rss = analyze(str(run_dir), "--format", "json")
    assert code == 0, err
    assert "not gradscope events" in err or "read only the first" in err
    assert json.loads(out)["summary"]["steps"] == 8
    assert 0 < rss < 1 << 30, rss


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("where", ["manifest", "index"])
def test_deeply_nested_json_is_an_error_or_a_fallback_never_a_traceback(run_dir, where):
    """Item 11: a deeply nested manifest is a clear error; a corrupt merged/index.json (a cache) is
    ignored with a warning and the intact chunks are read."""
    before = gradscope.load_run(run_dir).metric("param", "grad_norm").copy()
    if where == "manifest":
        (run_dir / "manifest.json").write_text('{"format": "gradscope-run", "x": ' + _nested(100_000) + "}")
        with pytest.raises(gradscope.RunError, match="nested too deeply"):
            gradscope.load_run(run_dir)
        code, _, err, _ = analyze(str(run_dir))
        assert code == 2 and "Traceback" not in err and "nested too deeply" in err
    else:
        (run_dir / "merged" / "index.json").write_text(_nested(100_000))
        with pytest.warns(RuntimeWarning, match="reading the chunks instead"):
            run = gradscope.load_run(run_dir)
        np.testing.assert_array_equal(run.metric("param", "grad_norm"), before)
        code, _, err, _ = analyze(str(run_dir))
        assert code == 0 and "Traceback" not in err


def _sparse_chunk(path, steps: int) -> None:
    """A stored-zip chunk whose one member, step.npy, declares ``steps`` int64 steps over a hole."""
    import struct

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<i8", "fortran_order": False, "shape": (steps,)})
    member = head.getvalue()
    size = len(member) + 8 * steps
    name = b"step.npy"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, size, size, len(name), 0)
    with open(path, "wb") as f:
        f.write(local + name + member)
        f.seek(8 * steps, os.SEEK_CUR)  # the hole
        cd_off = f.tell()
        central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, size, size,
                              len(name), 0, 0, 0, 0, 0, 0) + name
        f.write(central)
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), cd_off, 0))


def test_sparse_chunk_declaring_a_huge_run_is_a_clear_error(run_dir):
    """Item 8: a chunk (a zip of stored .npy members, as RunWriter writes) whose step array declares
    400 M steps over a sparse hole: exit 2 naming the problem, bounded memory."""
    _sparse_chunk(run_dir / "chunks" / "000002.npz", 400_000_000)
    assert (run_dir / "chunks" / "000002.npz").stat().st_blocks * 512 < 100_000
    code, out, err, rss = analyze(str(run_dir))
    assert code == 2, err
    assert "Traceback" not in err and "not a run gradscope wrote" in err
    assert 0 < rss < 1 << 30, rss
