"""Never "healthy" when nothing was checked: empty selections, runs without steps, a crash recorded
at close; every report says what was and was not checked."""

from __future__ import annotations

import io
import json

from click.testing import CliRunner
from rich.console import Console
from test_edges import synthetic

from gradscope.cli import main
from gradscope.diagnose import coverage, diagnose
from gradscope.report.text import render_text, report_json, verdict
from gradscope.run.reader import load_run


def test_a_run_without_steps_is_nothing_checked_not_healthy(tmp_path):
    run = load_run(synthetic(tmp_path / "r", 0))
    cov = coverage(run)
    assert not cov["anything"] and "no recorded step" in cov["not_checked"][0]
    assert verdict(diagnose(run), cov) == "nothing checked"
    assert report_json(run, diagnose(run))["summary"]["verdict"] == "nothing checked"


def test_empty_steps_range_and_unmatched_layers_are_errors(tmp_path):
    path = synthetic(tmp_path / "r", 30)
    res = CliRunner().invoke(main, ["analyze", str(path), "--steps", "100:200"])
    assert res.exit_code == 2 and "--steps 100:200 selects no recorded step" in res.output
    assert "steps 0-29" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["analyze", str(path), "--layers", "encoder.*"])
    assert res.exit_code == 2 and "--layers encoder.* matches no row" in res.output and "l0.weight" in res.output


def test_what_could_not_be_checked_is_listed(tmp_path):
    path = synthetic(tmp_path / "r", 30)
    res = CliRunner().invoke(main, ["analyze", str(path), "--format", "json", "--layers", "l0.*"])
    summary = json.loads(res.stdout)["summary"]
    assert summary["verdict"] == "healthy"
    assert any("gradient flow with depth: fewer than 3" in s for s in summary["not_checked"])
    assert any("loss trend" in s for s in summary["not_checked"])  # the synthetic run logs no loss
    assert any("NaN/Inf" in s for s in summary["checked"])


def test_the_exception_recorded_at_close_leads_the_report(tmp_path):
    path = synthetic(tmp_path / "r", 30)
    line = {"step": 29, "kind": "exception", "type": "ValueError", "message": "shapes (64,4) and (2,32)",
            "traceback": "Traceback (most recent call last):\n  File \"train.py\", line 9\nValueError: shapes"}
    with open(path / "events.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    run = load_run(path)
    found = diagnose(run)
    assert found[0].kind == "exception" and found[0].steps == (29, 29)
    assert found[0].evidence["traceback_tail"].endswith("ValueError: shapes")
    buf = io.StringIO()
    render_text(run, found, Console(file=buf, width=80, color_system=None))
    out = buf.getvalue().splitlines()
    assert out[0].startswith("1 error") and out[1] == f"run: {path}"
    assert out[2].startswith("root cause: exception (step 29)")
