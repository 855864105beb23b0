"""AMP: steps the GradScaler skips (an Inf in the scaled gradients) are expected, not errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import gradscope
from gradscope.diagnose import Severity, diagnose
from gradscope.report.text import render_text

STEPS = 40


def _amp_run(path, bad_steps: set[int]) -> gradscope.Run:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    g = torch.Generator().manual_seed(1)
    with gradscope.watch(model, opt, log_dir=path, scaler=scaler, tensorboard=False) as scope:
        for i in range(STEPS):
            x, y = torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g)
            if i in bad_steps:
                x[0, 0] = float("inf")  # overflow: the scaler skips this step and halves the scale
            loss = ((model(x) - y) ** 2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            scope.log(loss=loss.detach())
    return gradscope.load_run(path)


def test_one_skipped_step_is_info_not_error(tmp_path):
    run = _amp_run(tmp_path / "r", {20})
    assert run.scalars["amp_skipped"][20] == 1
    found = diagnose(run)
    assert [(f.kind, f.severity) for f in found] == [("amp_overflow", Severity.INFO)]
    f = found[0]
    assert f.message.startswith("1 AMP overflow step skipped by the GradScaler")
    assert f.steps == (20, 20) and f.evidence["scale_max"] == 2.0**16 and f.evidence["scale_min"] == 2.0**15
    out = io.StringIO()
    from rich.console import Console

    render_text(run, found, Console(file=out, width=200))
    assert "AMP loss scale 2^15 .. 2^16 (last 2^15), 1 step skipped by the GradScaler" in out.getvalue()


def test_many_skipped_steps_warn(tmp_path):
    run = _amp_run(tmp_path / "r", set(range(5, STEPS, 5)))  # 7 of 40 steps: 17.5 % > 5 %
    (f,) = diagnose(run)
    assert f.kind == "amp_overflow" and f.severity == Severity.WARNING
    assert f.evidence["skipped_steps"] == 7


def test_nonfinite_outside_skipped_steps_is_still_an_error(tmp_path):
    run = _amp_run(tmp_path / "r", {20})
    run.scalars["amp_skipped"] = run.scalars["amp_skipped"].copy()
    run.scalars["amp_skipped"][20] = 0  # as if no scaler had skipped it
    kinds = {(f.kind, f.severity) for f in diagnose(run)}
    assert ("nonfinite", Severity.ERROR) in kinds


@pytest.mark.parametrize("threshold,sev", [(0.5, Severity.INFO), (0.01, Severity.WARNING)])
def test_warn_threshold_is_configurable(tmp_path, threshold, sev):
    run = _amp_run(tmp_path / "r", {10, 20, 30})
    (f,) = diagnose(run, {"nonfinite.amp_warn_frac": threshold})
    assert f.severity == sev
