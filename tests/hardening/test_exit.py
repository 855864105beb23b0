"""A script that ends without scope.close(): the Scope closes at interpreter exit, completely."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gradscope
from gradscope.run.reader import load_run

SRC = str(Path(gradscope.__file__).resolve().parents[1])

SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    import gradscope
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scope = gradscope.watch(model, opt, log_dir=sys.argv[1], flush_every=3, tensorboard=False)
    for _ in range(40):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        scope.log(loss=loss)
    print("DONE", flush=True)  # no close(): atexit closes it, after concurrent.futures refuses new work
""")


def test_scope_left_open_is_closed_at_exit_with_compaction_and_diagnosis(tmp_path):
    """Chunks of three layouts (1, 9 and 3 steps) make the reader use its thread pool, which refuses
    work at interpreter exit: the close must still compact the run and diagnose it, without errors."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(run_dir)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "DONE" in proc.stdout
    assert "RuntimeError" not in proc.stderr and "failed" not in proc.stderr, proc.stderr
    assert (run_dir / "merged" / "index.json").is_file()
    run = load_run(run_dir)
    assert run.num_steps == 40
