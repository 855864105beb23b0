"""TensorBoard logs written by another tool (a transformers Trainer's train/grad_norm, train/loss,
train/learning_rate) read with load_tensorboard and analysed: spikes, NaN, explosion, a healthy control.
The logs are written with torch.utils.tensorboard.SummaryWriter, with known events at known steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gradscope.cli import main
from gradscope.diagnose import Severity, diagnose

pytest.importorskip("tensorboard")
from gradscope.run.tbread import load_tensorboard  # noqa: E402

STEPS = 120
SPIKE, NAN, GN_NAN = 80, 70, 50


def _write(path: Path, series: dict[str, np.ndarray], summary_at: int | None = STEPS + 3) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for t in range(STEPS):
        for tag, values in series.items():
            w.add_scalar(tag, float(values[t]), t)
        w.add_scalar("train/epoch", t / 40, t)
    if summary_at is not None:  # the Trainer's end-of-training summary, off the logging cadence
        w.add_scalar("train/train_loss", 0.5, summary_at)
        w.add_scalar("train/epoch", 3.0, summary_at)
    w.close()
    return path


def _healthy(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS)
    return {"train/grad_norm": 2.0 * np.exp(-t / 200) * np.exp(rng.normal(0, 0.15, STEPS)),
            "train/loss": 0.7 * np.exp(-t / 80) + 0.05 + rng.uniform(0, 0.02, STEPS),
            "train/learning_rate": np.linspace(1e-3, 0, STEPS)}


def _log(tmp: Path, kind: str) -> Path:
    s = _healthy()
    if kind == "spike":
        s["train/grad_norm"][SPIKE] *= 50
        s["train/loss"][SPIKE] *= 8
    elif kind == "loss_spike":
        s["train/loss"][SPIKE] *= 6
    elif kind == "nan":  # diverged: loss and norm NaN from NAN on, the learning rate still logged
        s["train/loss"][NAN:] = np.nan
        s["train/grad_norm"][NAN:] = np.nan
    elif kind == "gn_nan":
        s["train/grad_norm"][GN_NAN] = np.inf
    elif kind == "growth":  # 1e5x over the run
        s["train/grad_norm"] = np.exp(np.arange(STEPS) * math.log(1e5) / STEPS) * s["train/grad_norm"]
    return _write(tmp / kind, s)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tb")
    return {k: _log(root, k) for k in ("healthy", "spike", "loss_spike", "nan", "gn_nan", "growth")}


def _findings(path: Path):
    run = load_tensorboard(path)
    assert not run.rows and {"grad_norm", "loss", "lr"} <= set(run.scalars)
    return diagnose(run)


def test_healthy_log_has_no_warning(logs):
    assert [f for f in _findings(logs["healthy"]) if f.severity != Severity.INFO] == []


def test_spike_at_known_step_with_loss_evidence(logs):
    found = _findings(logs["spike"])
    assert [f.kind for f in found] == ["gradient_spike"]  # the loss spike is evidence, not a 2nd finding
    f = found[0]
    assert f.steps == (SPIKE, SPIKE) and f.layers == []
    assert f.evidence["factor_over_median"] > 20 and f.evidence["loss_factor_over_median"] > 3
    assert "the loss spikes with it" in f.message


def test_loss_spike_alone(logs):
    (f,) = _findings(logs["loss_spike"])
    assert f.kind == "loss_spike" and f.severity == Severity.WARNING and f.steps == (SPIKE, SPIKE)


@pytest.mark.parametrize("kind,step,phase", [("nan", NAN, "loss"), ("gn_nan", GN_NAN, "global")])
def test_nonfinite_first_step_and_phase(logs, kind, step, phase):
    (f,) = [f for f in _findings(logs[kind]) if f.kind == "nonfinite"]
    assert f.severity == Severity.ERROR and f.layers == []
    assert f.origin == {"layer": None, "step": step, "phase": phase, "module_type": None}
    assert f.evidence["first_step"] == step
    assert "gradscope.watch" in f.remedy


def test_growth_is_explosion_with_onset(logs):
    (f,) = [f for f in _findings(logs["growth"]) if f.kind == "exploding_gradient"]
    assert f.evidence["growth_over_time"] > 1e3
    # 1e5x over 120 steps passes 1e3x near step 72; block medians put the onset within a block of it.
    assert 60 <= f.evidence["onset_step"] <= 85 and f.steps[0] == f.evidence["onset_step"]
    assert not [g for g in _findings(logs["growth"]) if g.kind == "gradient_spike"]


def test_amp_skipped_steps_are_ignored_by_spike_and_growth(tmp_path):
    s = _healthy()
    skip = np.zeros(STEPS)
    skip[[30, SPIKE]] = 1
    s["train/grad_norm"][[30, SPIKE]] = 1e6  # overflowed under the loss scale: not the model's norm
    s["global/amp_skipped"] = skip
    s["global/amp_scale"] = np.where(np.arange(STEPS) >= 30, 2.0**15, 2.0**16)
    found = diagnose(load_tensorboard(_write(tmp_path / "amp", s)))
    assert [(f.kind, f.severity) for f in found] == [("amp_overflow", Severity.INFO)]


def analyze(*args) -> object:
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


@pytest.mark.parametrize("kind,gate,code", [("healthy", "warning", 0), ("spike", "warning", 1),
                                            ("spike", "error", 0), ("nan", "error", 1),
                                            ("growth", "warning", 1)])
def test_cli_reads_tensorboard_logs_and_gates(logs, kind, gate, code):
    res = analyze(logs[kind], "--format", "json", "--fail-on", gate)
    assert res.exit_code == code, res.output
    out = json.loads(res.stdout)
    assert out["summary"]["source"] == "tensorboard" and out["summary"]["steps"] == STEPS + 1


def test_cli_text_and_plots_for_a_tensorboard_log(logs, tmp_path):
    res = analyze(logs["nan"], "--plots", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("1 error") and "scalars only" in res.stdout and "grad_norm" in res.stdout
    assert [p.name for p in (tmp_path / "p").glob("*.png")] == ["global_norm.png"]
    md = analyze(logs["nan"], "--format", "markdown").stdout
    assert "## Scalars" in md and "`loss`" in md


def test_cli_directory_with_neither_manifest_nor_events_exits_2(tmp_path):
    res = analyze(tmp_path)
    assert res.exit_code == 2 and "manifest.json" in res.stderr
