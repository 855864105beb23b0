"""Training one config: deterministic on CPU, resumable, Ctrl-C keeps finished configs."""

from __future__ import annotations

import json

import pytest

from gradscope import load_run
from gradscope.experiments import runner
from gradscope.experiments.grid import Config
from gradscope.experiments.runner import RESULT, run_config, run_grid


def _cfg(seed=0, act="relu", clip="norm", steps=12):
    return Config("spirals", seed, steps, 3e-3, clip, act, "he", 3, 16, batch=64)


def _numbers(result):
    return {k: result[k] for k in ("final", "metrics", "curves")}


def test_same_config_twice_gives_identical_numbers(tmp_path):
    a = run_config(_cfg(), tmp_path / "a")
    b = run_config(_cfg(), tmp_path / "b")
    assert _numbers(a) == _numbers(b)
    assert a["metrics"]["clip_rate"] is not None and a["metrics"]["steps_recorded"] == 12
    assert _numbers(run_config(_cfg(seed=1), tmp_path / "c")) != _numbers(a)


def test_each_config_is_a_run_directory_with_its_result(tmp_path):
    cfg = _cfg()
    result = run_config(cfg, tmp_path)
    run = load_run(tmp_path / cfg.dirname)
    assert run.num_steps == 12 and "clip_coef" in run.scalars and "loss" in run.scalars
    on_disk = json.loads((tmp_path / cfg.dirname / RESULT).read_text())
    assert on_disk["config"] == cfg.to_json() and on_disk["metrics"] == result["metrics"]


def test_rerun_skips_finished_and_redoes_unfinished(tmp_path):
    configs = [_cfg(seed=0), _cfg(seed=1)]
    first = run_grid(configs, tmp_path)
    assert (first.ran, first.skipped) == (2, 0)
    (tmp_path / configs[1].dirname / RESULT).unlink()  # as if killed before the result was written
    second = run_grid(configs, tmp_path)
    assert (second.ran, second.skipped) == (1, 1)
    assert _numbers(second.results[1]) == _numbers(first.results[1])


def test_ctrl_c_keeps_what_finished(tmp_path, monkeypatch):
    configs = [_cfg(seed=s) for s in range(3)]
    real = runner.run_config
    calls = []

    def interrupted_on_second(cfg, out, tensorboard=False):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, out, tensorboard)

    monkeypatch.setattr(runner, "run_config", interrupted_on_second)
    outcome = run_grid(configs, tmp_path)
    assert outcome.interrupted and len(outcome.results) == 1
    assert (tmp_path / configs[0].dirname / RESULT).is_file()
    monkeypatch.setattr(runner, "run_config", real)
    again = run_grid(configs, tmp_path)
    assert (again.ran, again.skipped, again.interrupted) == (2, 1, False)


@pytest.mark.parametrize("clip", ["none", "value", "agc", "autoclip", "zclip"])
def test_every_clip_strategy_records_its_coefficient(tmp_path, clip):
    result = run_config(_cfg(clip=clip, steps=6), tmp_path)
    assert len(result["curves"]["clip_coef"]) == 6
    assert 0.0 <= result["metrics"]["clip_rate"] <= 1.0
