"""report: verdict line, JSON contract (strict, NaN -> null), markdown and rich text renderings."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from gradscope.diagnose import Finding, Severity
from gradscope.report.text import dumps, layer_summary, render_markdown, render_text, report_json, verdict
from gradscope.run import format as fmt
from gradscope.run.reader import load_run
from gradscope.run.writer import RunWriter


def _run(path: Path, steps: int = 20):
    rows = [fmt.Row("net.0.weight", "param", "Linear", [4, 4], 0),
            fmt.Row("net.2.weight", "param", "Linear", [2, 4], 2, trainable=False)]
    w = RunWriter(path)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    gn = np.full((steps, 2), np.nan, np.float32)
    gn[:, 0] = np.linspace(1, 2, steps)
    w.write_chunk({"step": np.arange(steps), "param/grad_norm": gn,
                   "param/grad_nonfinite": np.zeros((steps, 2), np.float32),
                   "scalar/grad_norm": np.linspace(1, 2, steps).astype(np.float32)})
    w.close()
    return load_run(path)


def _findings() -> list[Finding]:
    return [
        Finding("frozen_parameters", Severity.INFO, ["net.2.*"], (0, 19), {"frozen_params": 1}, "m", "r"),
        Finding("nonfinite", Severity.ERROR, ["net.0"], (5, 19),
                {"first_step": 5, "bad": float("nan"), "big": float("inf"), "n": np.int64(3)},
                "NaN at step 5 | pipe", "look at net.0",
                origin={"layer": "net.0", "step": 5, "phase": "forward"}),
        Finding("gradient_spike", Severity.WARNING, [], (7, 7), {"z": np.float32(9.5)}, "spike", "ZClip"),
    ]


def test_verdict():
    assert verdict([]) == "healthy"
    assert verdict(_findings()[:1]) == "healthy (1 info)"
    assert verdict(_findings()) == "1 error, 1 warning, 1 info"


def test_json_contract_is_strict(tmp_path):
    run = _run(tmp_path / "r")
    payload = report_json(run, _findings())
    text = dumps(payload)
    back = json.loads(text)  # dumps uses allow_nan=False: this would have raised on NaN
    assert back["schema"] == 2 and back["run"] == str(tmp_path / "r")
    assert back["summary"]["steps"] == 20 and back["summary"]["rows"] == 2
    nf = back["findings"][1]
    assert nf["evidence"] == {"first_step": 5, "bad": None, "big": None, "n": 3}
    assert nf["origin"] == {"layer": "net.0", "step": 5, "phase": "forward"}
    assert nf["steps"] == [5, 19]
    assert "origin" not in back["findings"][0]
    assert isinstance(back["findings"][2]["evidence"]["z"], float)


def test_markdown_and_text(tmp_path):
    from rich.console import Console

    run = _run(tmp_path / "r")
    md = render_markdown(run, _findings())
    assert md.splitlines()[2].startswith("**Verdict: 1 error, 1 warning")
    assert md.index("## Errors") < md.index("## Warnings") < md.index("## Infos")
    assert "`net.2.weight (frozen)`" in md and "Origin:" in md
    buf = io.StringIO()
    render_text(run, _findings(), Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert out.splitlines()[0].startswith("1 error, 1 warning")
    assert out.index("ERRORS") < out.index("WARNINGS") < out.index("INFOS") < out.index("net.0.weight")


def test_layer_summary_still_works(tmp_path):
    rows = layer_summary(_run(tmp_path / "r"))
    assert [r["name"] for r in rows] == ["net.0.weight", "net.2.weight"]
    assert rows[0]["first"] == 1.0 and rows[1]["steps_with_grad"] == 0
