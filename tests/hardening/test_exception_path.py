"""The exception path of close(): no collective, the user's exception unchanged, every recorded step on
disk, the exception recorded as an event (item 4 of issue 12, and the exception event the report leads
with). Real gloo ranks: two processes on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hardening_helpers import child_env, tiny_model, train

import gradscope

RANK = textwrap.dedent("""
    import sys, datetime, torch, torch.distributed as dist
    from torch import nn
    import gradscope
    torch.set_num_threads(1)
    rank, init_file, log_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    try:
        with gradscope.watch(model, opt, log_dir=log_dir, flush_every=8, tensorboard=False) as scope:
            for step in range(10_000):
                if rank == 1 and step == 50:
                    raise ValueError("boom at step 50 on rank 1")
                model(torch.randn(4, 8)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
    except BaseException as exc:
        print("CLOSED", type(exc).__name__, scope.step_index, flush=True)  # close() returned
        raise
""")


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="torch.distributed, gloo")
def test_ddp_one_rank_raises_each_rank_closes_locally(tmp_path):
    fd, init_file = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    os.unlink(init_file)
    log_dir = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), init_file, str(log_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
             for r in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a rank hung: a collective ran on the exception path")
    (out0, err0), (out1, err1) = outs
    # rank 1: the user's exception, unchanged, after close() returned (no SIGABRT inside close)
    assert "CLOSED ValueError" in out1, err1[-2000:]
    assert "ValueError: boom at step 50 on rank 1" in err1
    assert "collective" not in err1.lower() or "mismatch" not in err1.lower()
    # rank 0: its own error (the peer left), then its local close wrote every recorded step
    assert "CLOSED" in out0, err0[-2000:]
    for p in procs:  # gloo may abort at teardown, after close (see tests/training/test_distributed.py)
        assert p.returncode in (1, -signal.SIGABRT), p.returncode
    run = gradscope.load_run(log_dir)
    assert run.num_steps >= 50 and run.steps.tolist() == list(range(run.num_steps))
    assert np.isfinite(run.metric("param", "grad_norm")[:50]).all()
    assert [e["kind"] for e in run.events].count("exception") == 1


def test_exception_is_recorded_as_an_event_with_its_traceback(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def inner():
        raise ValueError("loss went bad")

    with pytest.raises(ValueError, match="loss went bad"):
        with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=100, tensorboard=False) as scope:
            train(model, opt, 7, scope=scope)
            inner()
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == 7
    (ev,) = [e for e in run.events if e["kind"] == "exception"]
    assert ev["step"] == 7 and ev["type"] == "ValueError" and ev["message"] == "loss went bad"
    assert "in inner" in ev["traceback"] and ev["traceback"].rstrip().endswith("ValueError: loss went bad")
    json.dumps(ev)
