"""scope.latest(): the last flushed step's headline statistics as floats, read without a host sync."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import gradscope


def test_latest_is_the_last_flushed_step(tmp_path, no_host_sync):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=3, tensorboard=False,
                            flush_seconds=None)  # flushes by count, at the steps asserted below
    assert scope.latest() == {}  # nothing flushed yet
    guard = no_host_sync(scope)
    seen = []
    with guard:
        for _ in range(7):
            loss = model(torch.randn(6, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
            seen.append(scope.latest().get("step"))  # no sync: a dict of floats
    assert guard.checked >= 0 and not guard.violations, guard.violations
    scope.flush(wait=True)
    latest = scope.latest()
    scope.close()
    run = gradscope.load_run(tmp_path / "run")
    assert latest["step"] == run.steps[-1] == 6
    assert latest["grad_norm"] == run.scalars["grad_norm"][-1] and latest["loss"] == run.scalars["loss"][-1]
    grad = run.metric("param", "grad_norm")[-1]
    assert latest["layer_grad_norm_max"] == np.nanmax(grad) and latest["layer_grad_norm_min"] == np.nanmin(grad)
    assert latest["nonfinite"] == 0.0 and math.isfinite(latest["lr"])
    assert all(isinstance(v, float) for v in latest.values())
    assert {s for s in seen if s is not None} <= {2.0, 5.0}  # only flushed steps, never a live device read
