"""The public reading side: gradscope.diagnose(run) and a one-line repr(Run)."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

import gradscope


def _run(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False) as scope:
        for _ in range(5):
            loss = model(torch.randn(6, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
    return gradscope.load_run(tmp_path / "run")


def test_gradscope_diagnose_is_the_detectors(tmp_path):
    from gradscope.diagnose import diagnose  # binds the package as gradscope.diagnose: still callable

    run = _run(tmp_path)
    assert [f.to_json() for f in gradscope.diagnose(run)] == [f.to_json() for f in diagnose(run)]
    cfg = {"spike.factor": 2.0}
    assert [f.kind for f in gradscope.diagnose(run, cfg)] == [f.kind for f in diagnose(run, cfg)]
    assert "diagnose" in dir(gradscope)


def test_diagnose_is_reachable_before_any_submodule_import():
    code = "import gradscope, inspect; print(callable(gradscope.diagnose), 'torch' in __import__('sys').modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]  # and reading stays torch-free


def test_repr_run_is_one_line(tmp_path):
    run = _run(tmp_path)
    text = repr(run)
    assert "\n" not in text and len(text) < 300
    assert text.startswith(f"Run({str(tmp_path / 'run')!r}, 5 steps (steps 0-4), rows: param=4, act=3, flow=3")
    assert "loss" in text and "grad_norm" in text
