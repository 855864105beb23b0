"""NaN/Inf in inputs, weights and loss never crash a training loop through gradscope."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.cli import main


@pytest.mark.parametrize("where", ["input", "weight", "loss", "all"])
def test_nonfinite_everywhere_is_recorded_not_raised(tmp_path, where):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=3) as scope:
        for step in range(8):
            x = torch.randn(16, 4)
            if step >= 4 and where in ("input", "all"):
                x[0, 0] = float("nan")
            if step == 4 and where in ("weight", "all"):
                with torch.no_grad():
                    model[2].weight[0, 0] = float("inf")
            loss = model(x).pow(2).mean()
            if step >= 4 and where in ("loss", "all"):
                loss = loss * float("inf")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            gradscope.clip.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == 8
    assert np.isfinite(run.scalars["grad_norm"][:4]).all()
    assert not np.isfinite(run.scalars["grad_norm"][4:]).any()
    assert (np.nan_to_num(run.metric("param", "grad_nonfinite")[4:], nan=0).max(axis=1) > 0).all()
    result = CliRunner().invoke(main, ["analyze", str(tmp_path / "run"), "--format", "json", "--fail-on", "error"])
    assert result.exit_code == 1, result.output  # a non-finite finding is an error
    assert '"nonfinite"' in result.output and "Traceback" not in result.output
