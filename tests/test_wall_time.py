"""Per-step host wall time (stamped when the optimizer step returns, no device sync) and the
time-based flush (``flush_seconds``, the 1st and 10th recorded steps early)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.run import format as fmt
from gradscope.run.chunks import list_chunks
from gradscope.run.writer import RunWriter


def _model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def _step(m, opt) -> float:
    loss = m(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.time()


def test_wall_time_is_each_steps_own_host_time(tmp_path):
    m, opt = _model()
    stamps, gaps = [], [0.0, 0.2, 0.0, 0.3, 0.0, 0.0]
    with gradscope.watch(m, opt, log_dir=tmp_path / "r", tensorboard=False, flush_every=4) as scope:
        for gap in gaps:
            time.sleep(gap)
            before = time.time()
            after = _step(m, opt)
            stamps.append((before, after))
        scope.log(loss=1.0)  # the last step closes at close(): its stamp stays the optimizer step's
        time.sleep(0.2)
    run = gradscope.load_run(tmp_path / "r")
    assert run.wall_time.dtype == np.float64 and run.wall_time.shape == (len(gaps),)
    lo = np.array([b for b, _ in stamps]) - 0.02  # float32 seconds since start: ~1 us here
    hi = np.array([a for _, a in stamps]) + 0.02
    assert ((run.wall_time >= lo) & (run.wall_time <= hi)).all(), (run.wall_time - lo, hi - run.wall_time)
    np.testing.assert_allclose(np.diff(run.wall_time)[[0, 2]], [0.2, 0.3], atol=0.15)
    assert run.manifest["config"]["flush_seconds"] == 30.0


def test_runs_without_wall_time_read_as_nan(tmp_path):
    rows = [fmt.Row("l.weight", "param", "Linear", [2, 2], 0)]
    w = RunWriter(tmp_path / "old")
    w.write_manifest(fmt.make_manifest(rows, {"started": 1.0}, {}))
    w.write_chunk({"step": np.arange(3), "param/grad_norm": np.ones((3, 1), np.float32),
                   "scalar/grad_norm": np.ones(3, np.float32)})
    w.close()
    run = gradscope.load_run(tmp_path / "old")
    assert run.num_steps == 3 and np.isnan(run.wall_time).all() and set(run.scalars) == {"grad_norm"}


def _chunks(path: Path) -> int:
    return len(list_chunks(path / fmt.CHUNK_DIR))


def _wait_for(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_first_steps_flush_early_then_by_time(tmp_path):
    m, opt = _model()
    path = tmp_path / "r"
    scope = gradscope.watch(m, opt, log_dir=path, tensorboard=False, flush_every=1000, flush_seconds=0.25)
    try:
        _step(m, opt)
        m(torch.randn(1, 4))  # the next activity closes step 0: the 1st recorded step flushes at once
        assert _wait_for(lambda: _chunks(path) == 1)
        for _ in range(9):
            _step(m, opt)
        m(torch.randn(1, 4))  # 10th recorded step: flushed too
        assert _wait_for(lambda: _chunks(path) == 2)
        assert gradscope.load_run(path).num_steps == 10  # readable while training goes on
        for _ in range(6):
            time.sleep(0.1)
            _step(m, opt)
        assert _wait_for(lambda: _chunks(path) >= 4), _chunks(path)  # ~0.6 s at one flush per 0.25 s
    finally:
        scope.close()
    assert gradscope.load_run(path).num_steps == 16


def test_count_only_without_flush_seconds(tmp_path):
    m, opt = _model()
    with gradscope.watch(m, opt, log_dir=tmp_path / "r", tensorboard=False, flush_every=1000,
                         flush_seconds=None) as scope:
        for _ in range(12):
            time.sleep(0.01)
            _step(m, opt)
        scope.flush(wait=True)
        assert _chunks(tmp_path / "r") == 1  # only the explicit flush: no early, no timed ones


@pytest.mark.parametrize("bad", [0, -1, "30", True])
def test_bad_flush_seconds_is_refused(tmp_path, bad):
    m, opt = _model()
    with pytest.raises(ValueError, match="flush_seconds"):
        gradscope.watch(m, opt, log_dir=tmp_path / "r", flush_seconds=bad)
    assert not (tmp_path / "r" / fmt.MANIFEST).exists()


def test_wall_time_name_is_reserved(tmp_path):
    m, opt = _model()
    with gradscope.watch(m, opt, log_dir=tmp_path / "r", tensorboard=False) as scope:
        _step(m, opt)
        with pytest.raises(ValueError, match="wall time"):
            scope.log(_wall_time=1.0)
