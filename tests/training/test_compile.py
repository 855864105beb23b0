"""torch.compile: watched compiled models record what eager records; no graph break on the grad path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradscope


def make() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))


def train(tmp_path, mode: str, steps: int = 3, **kw):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 2, generator=g)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if mode == "compile_then_watch":
        model = torch.compile(model, backend="aot_eager")
    scope = gradscope.watch(model, opt, log_dir=tmp_path / mode, tensorboard=False, **kw)
    if mode == "watch_then_compile":
        model = torch.compile(model, backend="aot_eager")
    for _ in range(steps):
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
    scope.close()
    return gradscope.load_run(tmp_path / mode)


@pytest.mark.parametrize("mode", ["watch_then_compile", "compile_then_watch"])
def test_compiled_model_records_the_same_as_eager(tmp_path, mode):
    from torch._dynamo.utils import counters

    eager = train(tmp_path, "eager")
    counters.clear()
    comp = train(tmp_path, mode)
    # gradscope's hooks run eagerly: dynamo does not trace them once per module and row
    assert not any("recompile limit" in reason for reason in counters["unimplemented"]), dict(counters["unimplemented"])
    assert not any("resume_in_hook" in k or "_on_forward" in k for k in counters["resumes"]), dict(counters["resumes"])
    assert [r.name for r in comp.rows] == [r.name for r in eager.rows]  # no _orig_mod. prefix
    for key in ("param/grad_norm", "param/grad_max", "act/mean", "act/std", "act/sat_frac", "flow/norm"):
        np.testing.assert_allclose(comp.metrics[key], eager.metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(comp.scalars["grad_norm"], eager.scalars["grad_norm"], rtol=1e-6)


def test_parameter_gradient_path_adds_no_graph_break(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    run = train(tmp_path, "watch_then_compile", activations=False, flow=False)
    assert run.num_steps == 3 and np.isfinite(run.scalars["grad_norm"]).all()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


@pytest.mark.parametrize("mode", ["watch_then_compile", "compile_then_watch"])
def test_every_n_on_a_compiled_model_records_the_same_as_eager(tmp_path, mode):
    """every=2: hooks come and go between steps unless watch() saw the compiled model; either way the
    recorded steps equal eager's, and the number of compiled graphs does not grow with the steps."""
    from torch._dynamo.utils import counters

    eager = train(tmp_path, "eager", steps=6, every=2)
    graphs = []
    for steps in (6, 12):
        counters.clear()
        comp = train(tmp_path / str(steps), mode, steps=steps, every=2)
        graphs.append(counters["stats"]["unique_graphs"])
    assert comp.steps.tolist()[:3] == eager.steps.tolist() == [0, 2, 4]
    for key in ("param/grad_norm", "act/mean", "act/std", "flow/norm"):
        np.testing.assert_allclose(comp.metrics[key][:3], eager.metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs
