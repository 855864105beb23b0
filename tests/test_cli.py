"""The gradscope command: help, demo, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

import gradscope
from gradscope.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "analyze" in result.output and "demo" in result.output


@pytest.mark.parametrize("make", ["missing", "file", "empty", "corrupt"])
def test_analyze_bad_input_is_one_line_exit_2(tmp_path, make):
    path = tmp_path / "run"
    if make == "file":
        path.write_text("hello")
    elif make == "empty":
        path.mkdir()
    elif make == "corrupt":
        path.mkdir()
        (path / "manifest.json").write_text("{]")
    proc = subprocess.run([sys.executable, "-m", "gradscope.cli", "analyze", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().startswith("error:")


def test_demo_writes_two_runs_showing_vanishing_gradients(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--steps", "40"])
    assert result.exit_code == 0, result.output
    assert "sigmoid" in result.output and "leaky_relu" in result.output
    assert "verdict: 1 error (vanishing_gradient)" in result.output
    sig = gradscope.load_run(out / "sigmoid")
    leaky = gradscope.load_run(out / "leaky_relu")
    assert sig.num_steps == leaky.num_steps == 40

    def first_over_last(run):
        import numpy as np

        gn = run.metric("param", "grad_norm")
        cols = [c for c in run.depth_order("param") if run.rows_of("param")[c].name.endswith("weight")]
        return np.median(gn[:, cols[0]]) / np.median(gn[:, cols[-1]])

    assert first_over_last(sig) < 1e-4 < first_over_last(leaky)
    # The LeakyReLU run is healthy for the right reason: its depth profile was checked and is level.
    from gradscope.diagnose import coverage, diagnose

    assert [f for f in diagnose(leaky) if f.severity.value != "info"] == []
    assert any(c.startswith("gradient flow with depth (13 dense layers)") for c in coverage(leaky)["checked"])
    assert any(c.startswith("loss trend") for c in coverage(leaky)["checked"])


def test_demo_into_a_file_is_an_error(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    result = CliRunner().invoke(main, ["demo", "--out", str(f), "--steps", "10"])
    assert result.exit_code == 2


def test_compact_command_merges_a_killed_run_and_rejects_non_runs(tmp_path):
    import shutil

    import numpy as np
    import torch

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=2, tensorboard=False):
        for _ in range(5):
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
            opt.zero_grad()
    before = gradscope.load_run(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "merged")  # as a killed process leaves it: chunks only
    result = CliRunner().invoke(main, ["compact", str(tmp_path / "run")])
    assert result.exit_code == 0 and "merged" in result.output
    assert (tmp_path / "run" / "merged").is_dir()
    after = gradscope.load_run(tmp_path / "run")
    np.testing.assert_array_equal(after.metric("param", "grad_norm"), before.metric("param", "grad_norm"))
    bad = CliRunner().invoke(main, ["compact", str(tmp_path / "nope")])
    assert bad.exit_code == 2


def test_overwrite_clears_merged_arrays(tmp_path):
    import torch

    model = torch.nn.Linear(3, 1)
    for steps in (4, 2):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, log_dir=tmp_path / "run", overwrite=True, tensorboard=False):
            for _ in range(steps):
                model(torch.randn(4, 3)).sum().backward()
                opt.step()
                opt.zero_grad()
    assert gradscope.load_run(tmp_path / "run").num_steps == 2
