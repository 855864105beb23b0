"""SIGKILL a training process mid-run (and a compaction mid-write): every flushed step stays readable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gradscope
from gradscope.run.reader import load_run

SRC = str(Path(gradscope.__file__).resolve().parents[1])
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

TRAIN = textwrap.dedent("""
    import sys, torch
    from torch import nn
    import gradscope
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scope = gradscope.watch(model, opt, log_dir=sys.argv[1], flush_every=3, tensorboard=False)
    step = 0
    while True:  # until killed; the writer thread is writing chunks all the time
        loss = model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        scope.log(loss=loss)
        step += 1
        if step % 10 == 0:
            scope.flush(wait=True)  # steps 0 .. step-1 are on disk now
            print("FLUSHED", step, flush=True)
""")

COMPACT = textwrap.dedent("""
    import os, sys
    from gradscope.run.compact import compact_run
    print("READY", flush=True)
    while True:  # rewrite merged/ over and over until killed
        try:
            os.unlink(os.path.join(sys.argv[1], "merged", "index.json"))
        except FileNotFoundError:  # killed last time between this unlink and the new index
            pass
        compact_run(sys.argv[1])
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def _kill_after(cmd: list[str], until: str, min_count: int, extra_s: float) -> int:
    """Run ``cmd``, read its stdout until a line ``until N`` with N >= min_count, wait ``extra_s``,
    SIGKILL it; return the largest N printed before the kill."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    seen = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, n = line.strip().partition(" ")
            if word == until:
                seen = int(n or 0)
                if seen >= min_count:
                    break
        else:
            pytest.fail(f"child exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(extra_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # lines printed between our last read and the kill also count as flushed
        rest = proc.stdout.read()
        for line in rest.splitlines():
            word, _, n = line.strip().partition(" ")
            if word == until and n:
                seen = max(seen, int(n))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return seen


def _analyze_ok(path: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "gradscope.cli", "analyze", str(path), "--format", "json"],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


@pytest.mark.timeout(120)
def test_sigkill_mid_training_keeps_every_flushed_step(tmp_path):
    run_dir = tmp_path / "run"
    flushed = _kill_after([sys.executable, "-c", TRAIN, str(run_dir)], "FLUSHED", 60, random.uniform(0, 0.3))
    assert not (run_dir / "merged").exists()  # killed before close: only chunks
    run = load_run(run_dir)
    assert run.num_steps >= flushed
    assert run.steps.tolist() == list(range(run.num_steps))  # no gap, no duplicate
    assert np.isfinite(run.metric("param", "grad_norm")[:flushed]).all()
    assert np.isfinite(run.scalars["loss"][:flushed]).all()
    import json

    report = json.loads(_analyze_ok(run_dir))
    assert report["summary"]["steps"] >= flushed


@pytest.mark.timeout(120)
def test_sigkill_mid_compaction_leaves_a_readable_run(tmp_path):
    from gradscope.run import format as fmt
    from gradscope.run.compact import compact_run
    from gradscope.run.writer import RunWriter

    run_dir = tmp_path / "run"
    rows = [fmt.Row(f"l{i}.weight", "param", "Linear", [4, 4], i) for i in range(40)]
    w = RunWriter(run_dir, compact=False)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    rng = np.random.default_rng(0)
    for c in range(300):
        w.write_chunk({"step": np.arange(c * 50, c * 50 + 50),
                       "param/grad_norm": rng.random((50, 40), dtype=np.float32),
                       "scalar/lr": np.full(50, c, np.float32)})
    w.close()
    ref = load_run(run_dir)
    assert compact_run(run_dir)
    for _ in range(3):
        _kill_after([sys.executable, "-c", COMPACT, str(run_dir)], "READY", 0, random.uniform(0.05, 0.6))
        run = load_run(run_dir)
        assert run.warnings == []
        assert run.steps.tolist() == ref.steps.tolist()
        np.testing.assert_array_equal(run.metric("param", "grad_norm"), ref.metric("param", "grad_norm"))
        np.testing.assert_array_equal(run.scalars["lr"], ref.scalars["lr"])
    _analyze_ok(run_dir)
