"""A GradScaler in the loop but not given to watch(): gradscope finds it where it steps the watched
optimizer, warns once with the exact fix, and records the same unscaled statistics and skipped steps
as watch(..., scaler=scaler). The reference is the gradients after scaler.unscale_, as torch has them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradscope

STEPS, SKIP = 6, 3
ORIGINAL_STEP = torch.amp.GradScaler.step


def train(log_dir, pass_scaler: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=1000)
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    reference = []
    with gradscope.watch(model, opt, log_dir=log_dir, tensorboard=False,
                         scaler=scaler if pass_scaler else None) as scope:
        for step in range(STEPS):
            xb = x.clone()
            if step == SKIP:
                xb[0, 0] = float("inf")  # overflow: the scaler skips this step
            loss = nn.functional.cross_entropy(model(xb), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            reference.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            scope.log(loss=loss)
    return gradscope.load_run(log_dir), reference


def test_forgotten_scaler_is_found_and_unscaled(tmp_path):
    with pytest.warns(UserWarning, match=r"watch\(model, optimizer, scaler=scaler\)") as caught:
        run, reference = train(tmp_path / "forgot", pass_scaler=False)
    assert sum("GradScaler" in str(w.message) for w in caught) == 1  # once, not per step
    told, _ = train(tmp_path / "told", pass_scaler=True)
    assert run.num_steps == STEPS and run.manifest["config"]["amp"] is True
    ok = np.arange(STEPS) != SKIP
    np.testing.assert_allclose(run.scalars["grad_norm"][ok], np.array(reference)[ok], rtol=1e-5)
    assert run.scalars["amp_skipped"].tolist() == [float(s == SKIP) for s in range(STEPS)]
    assert any(e["kind"] == "amp_skip" and e["step"] == SKIP for e in run.events)
    for key in ("param/grad_norm", "param/grad_max"):  # the same record as when the scaler is passed
        np.testing.assert_allclose(run.metrics[key][ok], told.metrics[key][ok], rtol=1e-6, err_msg=key)
    # negative control: the scaled gradients are 2**14 times larger; gradscope's are not those
    assert np.nanmax(run.scalars["grad_norm"][ok]) < 1e2 < 2.0**14 * min(reference)


def test_passed_scaler_gives_no_warning_and_the_class_is_restored(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(tmp_path / "told", pass_scaler=True)
    assert torch.amp.GradScaler.step is ORIGINAL_STEP
    train_without_amp = gradscope.watch(nn.Linear(2, 1), None, log_dir=tmp_path / "x", tensorboard=False)
    train_without_amp.close()
    assert torch.amp.GradScaler.step is ORIGINAL_STEP


def test_class_patch_is_removed_after_a_forgotten_scaler_run(tmp_path):
    with pytest.warns(UserWarning):
        train(tmp_path / "forgot", pass_scaler=False)
    assert torch.amp.GradScaler.step is ORIGINAL_STEP
