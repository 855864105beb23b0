"""plots: every figure is written, is a non-empty PNG, and degenerate runs do not crash or warn."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from gradscope import _optional
from gradscope.diagnose import diagnose
from gradscope.run import format as fmt
from gradscope.run.reader import load_run
from gradscope.run.writer import RunWriter

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def _run(path: Path, steps: int, spike: int | None = None, clip: bool = False):
    rng = np.random.default_rng(0)
    rows = [fmt.Row(f"l{i}.weight", "param", "Linear", [8, 8], 2 * i) for i in range(4)]
    rows += [fmt.Row(str(2 * i + 1), "act", "ReLU", [], 2 * i + 1) for i in range(3)]
    w = RunWriter(path)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    if steps:
        gn = (0.1 * 2.0 ** np.arange(4) * np.exp(rng.normal(0, 0.1, (steps, 4)))).astype(np.float32)
        g = np.sqrt((gn.astype(np.float64) ** 2).sum(1)).astype(np.float32)
        nf = np.zeros((steps, 4), np.float32)
        if spike is not None:
            gn[spike] *= 100
            g[spike] *= 100
            nf[steps - 3:, 0] = 1
        chunk = {"step": np.arange(steps), "param/grad_norm": gn, "param/grad_nonfinite": nf,
                 "act/zero_frac": rng.uniform(0, 0.5, (steps, 3)).astype(np.float32),
                 "act/dead_frac": rng.uniform(0, 0.2, (steps, 3)).astype(np.float32),
                 "scalar/grad_norm": g}
        if clip:
            chunk["scalar/clip_coef"] = np.where(g > np.median(g) * 1.2, 0.5, 1.0).astype(np.float32)
        w.write_chunk(chunk)
    w.close()
    return load_run(path)


def test_all_figures_written(tmp_path):
    from gradscope.report.plots import write_plots

    run = _run(tmp_path / "r", 200, spike=150, clip=True)
    findings = diagnose(run)
    assert any(f.kind == "gradient_spike" for f in findings)
    paths = write_plots(run, findings, tmp_path / "plots")
    assert len(paths) == 4
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000, p


@pytest.mark.parametrize("steps", [0, 1, 3000])
def test_degenerate_and_long_runs(tmp_path, steps):
    from gradscope.report.plots import MAX_COLUMNS, _reduce, write_plots

    run = _run(tmp_path / "r", steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        paths = write_plots(run, diagnose(run), tmp_path / "p")
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    s, v = _reduce(run.steps, run.metric("param", "grad_norm"))
    assert len(s) == len(v) <= max(MAX_COLUMNS, 1) or steps <= MAX_COLUMNS


def test_missing_matplotlib_names_the_install(tmp_path, monkeypatch):
    from gradscope.report import plots

    def missing(name, feature):
        raise _optional.MissingDependencyError(f"{feature} needs {name}: pip install matplotlib")

    monkeypatch.setattr(_optional, "require", missing)
    with pytest.raises(_optional.MissingDependencyError, match="pip install matplotlib"):
        plots.write_plots(_run(tmp_path / "r", 5), [], tmp_path / "p")
