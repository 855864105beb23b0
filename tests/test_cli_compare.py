"""gradscope compare: a small grid end to end, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from gradscope.cli import main

SMALL = ["--activations", "relu,sigmoid", "--clip", "none,norm", "--depth", "4", "--init", "he",
         "--steps", "8", "--seeds", "2"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _compare(*args: str):
    return CliRunner().invoke(main, ["compare", *args])


def test_small_grid_writes_runs_table_csv_and_figures(tmp_path):
    out = tmp_path / "cmp"
    result = _compare(*SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 3 * 2  # sweep: relu/none (baseline), sigmoid/none, relu/norm; 2 seeds each
    assert all((r / "manifest.json").is_file() and (r / "result.json").is_file() for r in runs)
    md = (out / "table.md").read_text()
    assert "| sigmoid | none | 2 |" in md and "clip rate" in md
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["activation"], r["clip"]) for r in rows] == [("relu", "none"), ("sigmoid", "none"), ("relu", "norm")]
    assert float(rows[2]["clip_rate_mean"]) >= 0.0 and rows[0]["seeds"] == "2"
    assert {"grad_by_depth_activation.png", "loss_by_clip.png", "clip_coef.png"} <= {p.name for p in out.iterdir()}
    assert "6 run(s) trained, 0 reused" in result.output

    again = _compare(*SMALL, "--out", str(out))
    assert again.exit_code == 0 and "0 run(s) trained, 6 reused" in again.output
    assert json.loads((out / "results.json").read_text())[0]["seeds"] == 2

    analyzed = CliRunner().invoke(main, ["analyze", str(runs[0]), "--format", "json"])
    assert analyzed.exit_code == 0, analyzed.output


def test_product_design_and_iris(tmp_path):
    pytest.importorskip("scipy")
    result = _compare("--task", "iris", "--activations", "relu,tanh", "--clip", "none,zclip", "--depth", "2",
                      "--steps", "5", "--seeds", "1", "--design", "product", "--out", str(tmp_path / "iris"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "iris" / "table.csv").open()))
    assert len(rows) == 4 and {r["task"] for r in rows} == {"iris"}


@pytest.mark.parametrize(("args", "message"), [
    (["--activations", "relu,swish"], "--activations: unknown 'swish'"),
    (["--clip", "huge"], "--clip: unknown 'huge'"),
    (["--init", "orthogonal"], "--init: unknown 'orthogonal'"),
    (["--task", "mnist"], "--task: unknown 'mnist'"),
    (["--depth", "0"], "--depth: 0 is out of range"),
    (["--depth", "four"], "--depth: 'four' is not an integer"),
    (["--lr", "-1"], "--lr: -1 is out of range"),
    (["--lr", "nan"], "--lr: nan is out of range"),
    (["--seeds", "0"], "--seeds '0'"),
    (["--steps", "1.5"], "--steps '1.5'"),
    (["--activations", ","], "--activations is empty"),
    (["--design", "random"], "--design: unknown 'random'"),
    (["--task", "finetune", "--activations", "relu"], "--activations does not apply to --task finetune"),
    (["--task", "finetune", "--regime", "top9", "--backbone", "tiny"], "only 2 encoder layers"),
    (["--task", "finetune", "--regime", "half"], "--regime: unknown 'half'"),
    (["--backbone", "tiny"], "--backbone applies to --task finetune only"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = _compare(*args, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    result = _compare(*SMALL, "--out", str(out))
    assert result.exit_code == 2 and "is a file" in result.output
