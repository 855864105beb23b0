"""A Scope fed by gradscope's clips: it reuses L2 statistics only, and records every clip's coefficient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
import gradscope.clip as C


@pytest.mark.parametrize("norm_type", [1.0, 2.0, float("inf")])
def test_grad_norm_is_l2_whatever_the_clip_norm_type(tmp_path, norm_type):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    l2, coefs = [], []
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=100, tensorboard=False) as scope:
        for _ in range(4):
            x, y = torch.randn(8, 6), torch.randn(8, 3)
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            l2.append(float(torch.nn.utils.get_total_norm([p.grad.double() for p in model.parameters()])))
            before = [p.grad.clone() for p in model.parameters()]
            total = C.clip_grad_norm_(model.parameters(), 0.05, norm_type=norm_type)
            coefs.append(float(model[0].weight.grad.flatten()[0] / before[0].flatten()[0]))
            assert float(total) > 0.05  # every step clips
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
    run = gradscope.load_run(tmp_path / "run")
    np.testing.assert_allclose(run.scalars["grad_norm"], l2, rtol=1e-5)  # L2, not the clip's L1 / max
    np.testing.assert_allclose(run.scalars["clip_coef"], coefs, rtol=1e-5)
