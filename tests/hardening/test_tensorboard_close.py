"""TensorBoardSink.close() releases everything: no thread and no open event file outlives a Scope or an
export (issue 12 item 15: tensorboard's EventFileWriter left one thread per Scope)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")

import gradscope  # noqa: E402
from gradscope.report.export import export_tensorboard  # noqa: E402


def _open_event_files() -> list[str]:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd to list open files")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if "tfevents" in target:
            out.append(target)
    return out


def _train(path: Path) -> gradscope.Scope:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=True, flush_every=3) as scope:
        for _ in range(5):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return scope


def test_scopes_and_exports_leave_no_thread_and_no_open_file(tmp_path):
    before = set(threading.enumerate())
    for i in range(3):
        scope = _train(tmp_path / f"run{i}")
        assert scope.write_errors == []
        export_tensorboard(tmp_path / f"run{i}", tmp_path / f"exported{i}")
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == [], f"threads left running after close(): {[t.name for t in left]}"
    assert _open_event_files() == []
    # and what was written is complete: tensorboard's own reader sees every step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for d in (tmp_path / "run2" / "tb", tmp_path / "exported2"):
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("global/grad_norm")] == list(range(5))
