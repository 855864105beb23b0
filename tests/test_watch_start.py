"""watch()'s entry: optimizer wrappers are unwrapped, bad arguments get a clear TypeError, and a
watch() that fails half-way leaves no hook and no file (so a retry works)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope.scope.setup import unwrap_optimizer


def model_and_opt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()) and all(
        not p._post_accumulate_grad_hooks for p in model.parameters())


class Holder:
    """A wrapper like accelerate's: the torch optimizer in .optimizer, a GradScaler in .scaler."""

    def __init__(self, opt, scaler=None):
        self.optimizer, self.scaler = opt, scaler


def test_wrappers_are_unwrapped_with_their_scaler():
    _, opt = model_and_opt()
    scaler = torch.amp.GradScaler("cpu")
    assert unwrap_optimizer(opt) == (opt, None)
    assert unwrap_optimizer(Holder(Holder(opt), scaler)) == (opt, scaler)


@pytest.mark.parametrize("bad, words", [
    (object(), "builtins.object"),
    ("adam", "builtins.str"),
    ("params", "that is the parameters"),
    ("scheduler", "scheduler.optimizer"),
])
def test_not_an_optimizer_is_a_clear_type_error(tmp_path, bad, words):
    model, opt = model_and_opt()
    if bad == "params":
        bad = model.parameters()
    elif bad == "scheduler":
        bad = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(TypeError, match=words):
        gradscope.watch(model, bad, log_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() and no_hooks(model)


class HalfBuilt(torch.optim.Optimizer):
    """An Optimizer subclass that skipped Optimizer.__init__ (as accelerate's wrapper does): hooking
    its step fails after the module and gradient hooks are already on."""

    def __init__(self, params):
        self.param_groups = [{"params": list(params), "lr": 0.1}]
        self.state = {}


@pytest.mark.parametrize("existing", [False, True])
def test_failed_watch_leaves_no_hook_and_no_file(tmp_path, existing):
    model, _ = model_and_opt()
    log_dir = tmp_path / "run"
    if existing:
        log_dir.mkdir()
        (log_dir / "notes.txt").write_text("mine")
    with pytest.raises(AttributeError):
        gradscope.watch(model, HalfBuilt(model.parameters()), log_dir=log_dir, tensorboard=True)
    assert no_hooks(model)
    if existing:
        assert sorted(p.name for p in log_dir.iterdir()) == ["notes.txt"]  # what was there stays
    else:
        assert not log_dir.exists()
    # the retry with a real optimizer works, with no FileExistsError
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=log_dir, tensorboard=False):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    assert gradscope.load_run(log_dir).num_steps == 1 and no_hooks(model)


def test_a_wrapper_without_watch_scaler_uses_its_grad_scaler(tmp_path):
    model, opt = model_and_opt()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(5, 4)
    with gradscope.watch(model, Holder(opt, scaler), log_dir=tmp_path / "run", tensorboard=False):
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    run = gradscope.load_run(tmp_path / "run")
    model2, _ = model_and_opt()
    model2(x).pow(2).mean().backward()
    expect = torch.nn.utils.get_total_norm([p.grad for p in model2.parameters()])
    assert run.scalars["grad_norm"][0] == pytest.approx(float(expect), rel=1e-5)


def test_start_step_numbers_the_first_step(tmp_path):
    model, opt = model_and_opt()
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False, start_step=10, every=2):
        for _ in range(4):
            model(torch.randn(3, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert gradscope.load_run(tmp_path / "run").steps.tolist() == [10, 12]
    with pytest.raises(ValueError, match="start_step"):
        gradscope.watch(model, opt, log_dir=tmp_path / "run2", start_step=-1)
