"""Foreign TensorBoard logs: the tag table, NaN/Inf as logged values, and "nothing checked"."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from gradscope.cli import main

pytest.importorskip("tensorboard")
from gradscope.run.tbread import gradscope_name, load_tensorboard  # noqa: E402


@pytest.mark.parametrize("tag, name", [
    ("train/loss", "loss"), ("train_loss", "loss"), ("train_loss_step", "loss"), ("loss", "loss"),
    ("Loss/train", "loss"), ("training_loss", "loss"), ("train/grad_norm", "grad_norm"),
    ("grad_2.0_norm_total", "grad_norm"), ("grad_norm", "grad_norm"), ("gradient_norm", "grad_norm"),
    ("train/learning_rate", "lr"), ("lr-AdamW", "lr"), ("lr", "lr"), ("global/amp_scale", "amp_scale"),
    # not the training loss or the total norm: kept under their own names
    ("val_loss", None), ("train_loss_epoch", None), ("train/train_loss", None), ("eval/loss", None),
    ("grad_2.0_norm/net.0.weight", None), ("lr-AdamW/pg2", None), ("epoch", None),
])
def test_tag_table(tag, name):
    assert gradscope_name(tag) == name


def _write(path, series):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(path)) as w:
        for tag, values in series.items():
            for step, v in values.items():
                w.add_scalar(tag, v, step)
    return path


def test_nan_and_inf_are_values_and_gaps_are_not(tmp_path):
    log = _write(tmp_path / "log", {"train_loss": {0: 1.0, 2: 0.9, 4: float("nan"), 6: float("inf")},
                                    "epoch": {s: 0.0 for s in range(7)}})
    run = load_tensorboard(log)
    assert run.manifest["config"]["recognised"] == {"loss": "train_loss"}
    assert run.steps.tolist() == list(range(7))
    assert run.logged["loss"].tolist() == [True, False, True, False, True, False, True]
    loss = run.scalars["loss"]
    assert np.isnan(loss[4]) and np.isinf(loss[6]) and np.isnan(loss[1])  # a gap and a NaN look alike...
    from gradscope.diagnose.nonfinite import logged_nonfinite

    assert np.flatnonzero(logged_nonfinite(run, "loss")).tolist() == [4, 6]  # ...the mask tells them apart


def test_nothing_recognised_is_nothing_checked_exit_2(tmp_path):
    log = _write(tmp_path / "log", {"accuracy": {s: 0.5 for s in range(5)}, "epoch": {s: 0.0 for s in range(5)}})
    res = CliRunner().invoke(main, ["analyze", str(log)])
    assert res.exit_code == 2
    assert "nothing checked" in res.stderr and "accuracy" in res.stderr and "train_loss" in res.stderr


def test_several_tensorboard_runs_are_analysed_each(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / "logs" / name, {"train/loss": {s: 1.0 / (s + 1) for s in range(8)}})
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "logs"), "--format", "json"])
    assert res.exit_code == 0, res.output
    import json

    assert [r["run"] for r in json.loads(res.stdout)] == [str(tmp_path / "logs" / n) for n in ("a", "b")]
