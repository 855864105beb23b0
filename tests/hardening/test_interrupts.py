"""Ctrl-C twice: the steps still queued when close() starts reach the disk (item 10 of issue 12).

A real child process and real SIGINTs; the child's disk is slow (each chunk write sleeps), so close()
has a long queue to drain when the second Ctrl-C arrives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hardening_helpers import child_env

import gradscope

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")

CHILD = textwrap.dedent("""
    import sys, time, torch, gradscope
    from torch import nn
    from gradscope.run.writer import RunWriter
    torch.set_num_threads(1)
    real = RunWriter.write_chunk
    def slow_disk(self, arrays):
        time.sleep(0.04)
        real(self, arrays)
    RunWriter.write_chunk = slow_disk
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = 0
    try:
        with gradscope.watch(model, opt, log_dir=sys.argv[1], flush_every=1, tensorboard=False) as scope:
            while True:
                model(torch.randn(4, 4)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                steps += 1
                if steps == 150:
                    print("READY", flush=True)
    except KeyboardInterrupt:
        print("STEPS", steps, flush=True)
""")


def test_second_ctrl_c_during_close_keeps_every_queued_step(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    os.kill(proc.pid, signal.SIGINT)  # the first Ctrl-C: the with block exits, close() drains the queue
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)  # the second one, while ~100 chunks are still queued
    out, err = proc.communicate(timeout=120)
    assert "STEPS" in out, err
    steps = int(out.split("STEPS")[1].split()[0])
    run = gradscope.load_run(run_dir)
    assert run.num_steps in (steps, steps + 1)  # the step under way at the interrupt may be recorded too
    assert run.steps.tolist() == list(range(run.num_steps))
    assert "finishing writing the run" in err, (steps, run.num_steps, err)
