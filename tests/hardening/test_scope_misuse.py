"""Misuse that used to corrupt the data silently: a reserved scalar name in scope.log (item 16 of
issue 12); a parameter replaced mid-run, a new optimizer (the "Also" item): one warning each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hardening_helpers import tiny_model, train
from torch import nn

import gradscope


@pytest.mark.parametrize("name", ["grad_norm", "lr", "lr_group1"])
def test_log_refuses_gradscopes_own_scalar_names(tmp_path, name):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref: list = []
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False) as scope:
        train(model, opt, 3, ref, scope)
        with pytest.raises(ValueError, match=f"gradscope's own measurement.*my_{name}"):
            scope.log(**{name: 123.0})
        scope.log(**{f"my_{name}": 123.0})  # the user's own namespace is fine
    run = gradscope.load_run(tmp_path / "run")
    total = np.sqrt((np.array(ref) ** 2).sum(1))
    np.testing.assert_allclose(run.scalars["grad_norm"], total, rtol=1e-5)  # not overwritten
    np.testing.assert_allclose(run.scalars["lr"], 0.05)


def test_clip_scalars_are_reserved_once_gradscope_clip_records_them(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False) as scope:
        model(torch.randn(5, 4)).pow(2).mean().backward()
        scope.log(clip_coef=0.5)  # clipped with torch: the user's own clip_coef is welcome
        opt.step()
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        total = gradscope.clip.clip_grad_norm_(model.parameters(), 1e-3)
        with pytest.raises(ValueError, match="gradscope's own measurement"):
            scope.log(clip_coef=0.5)
        opt.step()
    coef = gradscope.load_run(tmp_path / "run").scalars["clip_coef"]
    np.testing.assert_allclose(coef, [0.5, 1e-3 / (float(total) + 1e-6)], rtol=1e-5)


def test_replaced_parameter_warns_once(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=2, tensorboard=False):
        train(model, opt, 2)
        model[0].weight = nn.Parameter(model[0].weight.detach().clone())
        opt.param_groups[0]["params"][0] = model[0].weight
        with pytest.warns(RuntimeWarning, match=r"\['0.weight'\].*replaced") as caught:
            train(model, opt, 6)
    assert len([w for w in caught if "replaced" in str(w.message)]) == 1
    events = [e for e in gradscope.load_run(tmp_path / "run").events if e["kind"] == "param_replaced"]
    assert len(events) == 1 and events[0]["params"] == ["0.weight"]


def test_new_optimizer_warns_once(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False):
        train(model, opt, 2)
        other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)  # unrelated: no warning
        other.step()
        new = torch.optim.Adam(model.parameters(), lr=1e-3)
        with pytest.warns(RuntimeWarning, match="Adam that watch\\(\\) was not given") as caught:
            train(model, new, 3)
    assert len([w for w in caught if "not given" in str(w.message)]) == 1
