"""gradscope analyze: formats, exit codes (0 / 1 with --fail-on / 2 for bad input), plots, selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.experiments.data import spirals
from gradscope.experiments.models import mlp


def _record(path: Path, activation: str, depth: int, steps: int = 40) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = spirals(256)
    model = mlp(2, 2, 16, depth, activation, "he" if activation == "relu" else "default")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False, flush_every=10) as scope:
        for t in range(steps):
            idx = torch.arange(t * 7, t * 7 + 64) % x.shape[0]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss.detach())
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {"healthy": _record(root / "healthy", "relu", 2), "sick": _record(root / "sick", "sigmoid", 8)}


def analyze(*args: str) -> object:
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


def test_text_healthy_verdict_first_then_table(runs):
    res = analyze(runs["healthy"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("healthy")
    assert "depth" in res.stdout and "parameter" in res.stdout and "0.weight" in res.stdout


def test_text_sick_lists_findings_and_fix(runs):
    res = analyze(runs["sick"])
    assert res.exit_code == 0
    first = res.stdout.splitlines()[0]
    assert first.startswith("1 error")
    assert "vanishing_gradient" in res.stdout and "fix:" in res.stdout


@pytest.mark.parametrize("gate,name,code", [("error", "sick", 1), ("warning", "sick", 1),
                                            ("warning", "healthy", 0), ("error", "healthy", 0)])
def test_fail_on_gate(runs, gate, name, code):
    assert analyze(runs[name], "--fail-on", gate, "--format", "json").exit_code == code


def test_json_one_object_per_run_list_for_several(runs):
    one = json.loads(analyze(runs["sick"], "--format", "json").stdout)
    assert one["schema"] == 2 and one["run"] == str(runs["sick"])
    assert one["summary"]["steps"] == 40
    assert one["findings"][0]["kind"] == "vanishing_gradient"
    both = json.loads(analyze(runs["healthy"], runs["sick"], "--format", "json").stdout)
    assert [p["summary"]["verdict"] for p in both] == ["healthy", "1 error"]


def test_markdown(runs):
    res = analyze(runs["sick"], "--format", "markdown")
    assert res.exit_code == 0
    assert res.stdout.startswith("# gradscope report") and "**Fix:**" in res.stdout
    assert "| depth | parameter |" in res.stdout


def test_set_and_config_override_thresholds(runs, tmp_path):
    # With the vanishing check set out of reach, only its symptom is left: the loss stays at chance.
    res = analyze(runs["sick"], "--format", "json", "--set", "vanishing.ratio=1e-12",
                  "--set", "vanishing.error_ratio=1e-13")
    assert [f["kind"] for f in json.loads(res.stdout)["findings"]] == ["loss_plateau"]
    assert [f["kind"] for f in json.loads(analyze(runs["sick"], "--format", "json").stdout)["findings"]] == [
        "vanishing_gradient", "loss_plateau"]
    cfg = tmp_path / "t.toml"
    cfg.write_text("[vanishing]\nratio = 1e-12\n[plateau]\nchance_tol = 0\nimprovement = -1\n")
    assert json.loads(analyze(runs["sick"], "--format", "json", "--config", cfg).stdout)["findings"] == []


def test_steps_and_layers_select(runs):
    out = json.loads(analyze(runs["sick"], "--format", "json", "--steps", "10:20", "--layers", "0.*").stdout)
    assert out["summary"]["steps"] == 10
    assert out["findings"] == []  # one layer left: no depth trend to see


def test_plots_written(runs, tmp_path):
    res = analyze(runs["sick"], "--plots", tmp_path / "p", "--format", "json")
    assert res.exit_code == 0
    pngs = sorted((tmp_path / "p").glob("*.png"))
    assert [p.name for p in pngs] == ["activation_health.png", "global_norm.png", "gradient_flow.png",
                                      "norm_profile.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)


def _bad_inputs(tmp_path: Path, runs: dict[str, Path]) -> list[list[str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{not json")
    (tmp_path / "bad.json").write_text('{"vanishing": {"nope": 1}}')
    h = str(runs["healthy"])
    return [[str(tmp_path / "missing")], [str(empty)], [str(corrupt)], [h, "--steps", "x"],
            [h, "--steps", "9:3"], [h, "--set", "vanishing.nope=1"], [h, "--set", "novalue"],
            [h, "--set", "spike.z=big"], [h, "--config", str(tmp_path / "bad.json")],
            [h, "--config", str(tmp_path / "nofile.toml")]]


def test_bad_input_exits_2_with_one_line_and_no_traceback(runs, tmp_path):
    for args in _bad_inputs(tmp_path, runs):
        res = CliRunner().invoke(main, ["analyze", *args])
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_run_being_written_or_killed(runs, tmp_path):
    import shutil

    run = tmp_path / "partial"
    shutil.copytree(runs["sick"], run)
    (run / "chunks" / "000099.npz").write_bytes(b"PK\x03\x04 torn")  # a chunk cut short by a kill
    with open(run / "events.jsonl", "a") as f:
        f.write('{"step": 3, "kind": "cl')  # a torn last event line
    res = analyze(run, "--format", "json")
    assert res.exit_code == 0
    assert json.loads(res.stdout)["summary"]["steps"] == 40
    assert "warning:" in res.stderr
