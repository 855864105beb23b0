"""watch(..., on_finding=, stop_on=): findings while training, and HealthError that stops a doomed run."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import gradscope
from gradscope.diagnose import diagnose
from gradscope.diagnose import live as live_mod


class NaNAt(nn.Module):
    """Identity, except that the forward at call ``at`` outputs NaN (the planted producer)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("nan") if self.calls - 1 == self.at else x * 1.0


def model(nan_at: int = -1) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), NaNAt(nan_at), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 2))


def train(m: nn.Module, log_dir, steps: int = 100, **kw) -> tuple[gradscope.Scope, list[int]]:  # noqa: ANN001
    """Train on a fixed toy task; returns the scope and the steps whose optimizer step completed."""
    torch.set_num_threads(1)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)
    done: list[int] = []
    kw.setdefault("tensorboard", False)
    kw.setdefault("flush_seconds", None)  # chunks by count: the stop steps asserted below follow them
    with gradscope.watch(m, opt, log_dir=log_dir, **kw) as scope:
        for t in range(steps):
            x = torch.randn(32, 2, generator=g)
            y = (x[:, 0] > x[:, 1]).long()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss.detach())
            done.append(t)
    return scope, done


def test_nan_at_step_60_stops_by_step_70_with_the_planted_origin(tmp_path):
    m = model(nan_at=60)
    with pytest.raises(gradscope.HealthError) as info:
        train(m, tmp_path / "run", steps=200, flush_every=10, stop_on="error")
    err = info.value
    assert err.step == 70  # the chunk of steps 60-69 is checked at the flush that opens step 70
    assert (err.layer, err.phase, err.origin_step) == ("2", "forward", 60)
    assert err.finding.kind == "nonfinite" and "clamp" in err.remedy.lower()
    assert "step 60" in str(err) and err.finding.origin["module_type"] == "NaNAt"
    # The run was closed cleanly: complete up to the stop, readable, the error recorded in it.
    run = gradscope.load_run(tmp_path / "run")
    assert run.steps.tolist() == list(range(70))
    (exc,) = [e for e in run.events if e["kind"] == "exception"]
    assert exc["type"] == "HealthError" and exc["step"] == 70 and exc["finding"]["origin"]["layer"] == "2"
    assert [f.to_json() for f in diagnose(run)][0]["origin"]["step"] == 60
    assert all(not mod._forward_hooks for mod in m.modules())  # hooks removed


def test_the_optimizer_step_that_raises_does_not_update(tmp_path):
    m = model(nan_at=5)
    ran = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: ran.append(1))
    try:
        with pytest.raises(gradscope.HealthError) as info:
            train(m, tmp_path / "run", steps=50, flush_every=5, stop_on=["nonfinite"])
    finally:
        handle.remove()
    assert info.value.step == 10
    assert len(ran) == 10  # steps 0-9 updated the weights; the step that raised did not


def test_healthy_run_with_stop_on_error_runs_to_the_end(tmp_path):
    got = []
    scope, done = train(model(), tmp_path / "run", steps=120, flush_every=10, stop_on="error",
                        on_finding=got.append)
    assert done == list(range(120))
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == 120 and not [e for e in run.events if e["kind"] == "exception"]
    offline = diagnose(run)
    assert not [f for f in offline if f.severity.value != "info"]  # healthy: nothing to stop on
    assert [f.to_json() for f in scope.findings()] == [f.to_json() for f in offline]
    assert not [f for f in got if f.severity.value != "info"]
    for f in offline:  # every finding of the finished run reached on_finding
        assert any(live_mod.same(f, g.kind, live_mod.where(g)) for g in got), f.kind


def test_stop_on_other_kinds_does_not_stop_on_nan(tmp_path):
    got = []
    scope, done = train(model(nan_at=20), tmp_path / "run", steps=60, flush_every=10,
                        stop_on=["dead_units"], on_finding=got.append)
    assert done == list(range(60))
    assert [f.kind for f in got if f.kind == "nonfinite"] == ["nonfinite"]  # reported once, not fatal
    assert scope.findings()[0].kind == "nonfinite"


def test_on_finding_sees_nan_during_training_and_log_line_once(tmp_path, caplog):
    seen_at = []
    steps = []

    def on_finding(f):  # noqa: ANN001, ANN202
        seen_at.append((f.kind, len(steps)))

    m = model(nan_at=30)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    with caplog.at_level(logging.INFO, logger="gradscope"):
        with gradscope.watch(m, opt, log_dir=tmp_path / "run", flush_every=10, tensorboard=False, flush_seconds=None,
                             on_finding=on_finding) as scope:
            for t in range(80):
                loss = m(torch.randn(8, 2)).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                scope.log(loss=loss.detach())
                steps.append(t)
                if t == 45:
                    scope.flush(wait=True)  # by now the writer has diagnosed the chunk of steps 30-39
                    assert [f.kind for f in scope.findings()] == ["nonfinite"]
    assert ("nonfinite", 40) <= min(s for s in seen_at if s[0] == "nonfinite") <= ("nonfinite", 46)
    lines = [r for r in caplog.records if r.name == "gradscope" and "nonfinite" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "gradscope: error nonfinite in 2" in lines[0].getMessage()


def test_a_failing_on_finding_does_not_stop_training(tmp_path):
    def boom(f):  # noqa: ANN001, ANN202
        raise RuntimeError("user bug")

    scope, done = train(model(nan_at=3), tmp_path / "run", steps=30, flush_every=10, on_finding=boom)
    assert done == list(range(30))
    assert any("on_finding" in e and "user bug" in e for e in scope.write_errors)
    assert gradscope.load_run(tmp_path / "run").num_steps == 30


def test_live_false_diagnoses_nothing(tmp_path):
    scope, _ = train(model(nan_at=3), tmp_path / "run", steps=20, flush_every=10, live=False)
    assert scope.findings() == []
    assert not [e for e in gradscope.load_run(tmp_path / "run").events if e["kind"] == "finding"]


@pytest.mark.parametrize("kw,err,text", [
    ({"stop_on": "errors"}, ValueError, "'error', 'warning'"),
    ({"stop_on": ["nan"]}, ValueError, "unknown finding kind"),
    ({"stop_on": 3}, TypeError, "stop_on"),
    ({"live": False, "stop_on": "error"}, ValueError, "live=False"),
    ({"on_finding": "print"}, TypeError, "on_finding"),
])
def test_bad_arguments_are_named_and_leave_nothing(tmp_path, kw, err, text):
    with pytest.raises(err, match=text):
        gradscope.watch(model(), torch.optim.SGD(model().parameters(), 0.1), log_dir=tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_findings_reach_tensorboard_text(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(model(nan_at=12), tmp_path / "run", steps=30, flush_every=10, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "events/finding" in acc.Tags()["tensors"]
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("events/finding")]
    assert any("nonfinite" in t and "NaNAt" in t for t in texts)
    final = acc.Tensors("findings")[-1].tensor_proto.string_val[0].decode()  # the live list, with remedies
    assert "nonfinite" in final and "clamp" in final.lower()


def test_time_based_flush_finds_the_nan_long_before_the_count_flush(tmp_path):
    """flush_every=1000 but flush_seconds=0.2: the NaN at step 40 is caught at a time-based flush."""
    import time

    m = model(nan_at=40)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)
    with pytest.raises(gradscope.HealthError) as info:
        with gradscope.watch(m, opt, log_dir=tmp_path / "run", tensorboard=False, flush_every=1000,
                             flush_seconds=0.2, stop_on="error"):
            for _ in range(900):
                x = torch.randn(32, 2, generator=g)
                nn.functional.cross_entropy(m(x), (x[:, 0] > x[:, 1]).long()).backward()
                opt.step()
                opt.zero_grad()
                time.sleep(0.01)  # a step of a real model takes time: ~20 steps per 0.2 s window
    err = info.value
    assert (err.layer, err.phase, err.origin_step) == ("2", "forward", 40)
    assert 40 < err.step < 900  # stopped at a time-based flush, long before the first count-based one
