"""Detectors on degenerate runs (empty, one step, all-NaN columns), config overrides and selection."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gradscope.diagnose import ConfigError, diagnose, resolve_config
from gradscope.diagnose._util import nanmedian
from gradscope.diagnose.config import load_file, parse_set
from gradscope.diagnose.select import parse_steps, select
from gradscope.diagnose.spike import robust_z
from gradscope.run import format as fmt
from gradscope.run.reader import load_run
from gradscope.run.writer import RunWriter


def synthetic(path: Path, steps: int, n_param: int = 4, n_act: int = 3, fill: float | None = 1e-2,
              seed: int = 0, **overrides: np.ndarray) -> Path:
    """A run directory written with RunWriter: ``steps`` x rows of noise (or NaN when fill is None)."""
    rows = [fmt.Row(f"l{i}.weight", "param", "Linear", [8, 8], i) for i in range(n_param)]
    rows += [fmt.Row(f"a{i}", "act", "ReLU", [], i) for i in range(n_act)]
    rows += [fmt.Row(f"a{i}", "flow", "ReLU", [], i) for i in range(n_act)]
    widths = {"param": n_param, "act": n_act, "flow": n_act}
    rng = np.random.default_rng(seed)
    w = RunWriter(path)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    if steps:
        arrays = {"step": np.arange(steps, dtype=np.int64)}
        for kind, names in fmt.METRICS.items():
            for name in names:
                if fill is None:
                    a = np.full((steps, widths[kind]), np.nan, np.float32)
                elif name in ("grad_nonfinite", "nonfinite"):
                    a = np.zeros((steps, widths[kind]), np.float32)
                elif name in ("zero_frac", "sat_frac", "dead_frac"):
                    a = rng.uniform(0, 0.1, (steps, widths[kind])).astype(np.float32)
                else:
                    a = (fill * np.exp(rng.normal(0, 0.2, (steps, widths[kind])))).astype(np.float32)
                arrays[fmt.metric_key(kind, name)] = a
        arrays["scalar/grad_norm"] = np.full(steps, np.nan if fill is None else 0.1, np.float32)
        for k, v in overrides.items():
            arrays[k.replace("__", "/")] = v
        w.write_chunk(arrays)
    w.close()
    return path


@pytest.mark.parametrize("steps,fill", [(0, 1e-2), (1, 1e-2), (2, 1e-2), (1, None), (50, None), (300, 1e-2)])
def test_degenerate_runs_give_no_warning_and_no_crash(tmp_path, steps, fill):
    run = load_run(synthetic(tmp_path / "r", steps, fill=fill))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = diagnose(run)
    assert [f for f in found if f.severity.value != "info"] == []


def test_manifest_only_and_no_rows(tmp_path):
    run = load_run(synthetic(tmp_path / "r", 0, n_param=0, n_act=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diagnose(run) == []


def test_partial_nan_columns_and_infinite_update_ratio(tmp_path):
    ur = np.full((40, 4), np.nan, np.float32)
    ur[::10] = 1e-3
    ur[0] = np.inf  # zero-initialised weights give Inf on the first sample
    run = load_run(synthetic(tmp_path / "r", 40, param__update_ratio=ur))
    assert [f.kind for f in diagnose(run)] == []


def test_nonfinite_count_wins_over_nan_means_missing(tmp_path):
    nf = np.zeros((30, 3), np.float32)
    nf[12:, 1:] = 5  # row a1 produces first (a2 only passes it on)
    run = load_run(synthetic(tmp_path / "r", 30, act__nonfinite=nf))
    (f,) = [f for f in diagnose(run) if f.kind == "nonfinite"]
    assert f.origin == {"layer": "a1", "step": 12, "phase": "forward", "module_type": "ReLU"}


def test_nanmedian_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(37, 5))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 4] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(a, axis=0)
    np.testing.assert_allclose(nanmedian(a, axis=0), want, equal_nan=True)


def test_robust_z_flags_only_the_outlier():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (200, 1))
    x[150, 0] += 2.0  # 100x in log10 units
    z, dev = robust_z(x, 25, 16)
    assert np.nanargmax(z[:, 0]) == 150 and z[150, 0] > 6
    assert np.all(np.isnan(z[:25]))  # no reference for the first block


def test_config_overrides_and_unknown_keys(tmp_path):
    assert resolve_config({"vanishing.ratio": "1e-4"})["vanishing"]["ratio"] == 1e-4
    assert resolve_config({"spike": {"z": 4}})["spike"]["z"] == 4.0
    with pytest.raises(ConfigError, match="unknown setting 'vanishing.nope'.*vanishing.ratio"):
        resolve_config({"vanishing.nope": 1})
    with pytest.raises(ConfigError, match="unknown detector 'vanish'"):
        resolve_config({"vanish.ratio": 1})
    with pytest.raises(ConfigError, match="expected a number"):
        resolve_config({"vanishing.ratio": "small"})
    with pytest.raises(ConfigError, match="DETECTOR.KEY=VALUE"):
        parse_set(["ratio"])
    (tmp_path / "c.json").write_text(json.dumps({"dead_units": {"frac": 0.7}}))
    (tmp_path / "c.toml").write_text("[saturation]\nfrac = 0.4\n")
    (tmp_path / "bad.toml").write_text("[saturation\n")
    assert load_file(tmp_path / "c.json") == {"dead_units": {"frac": 0.7}}
    assert load_file(tmp_path / "c.toml") == {"saturation": {"frac": 0.4}}
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(tmp_path / "bad.toml")


def test_select_steps_and_layers(tmp_path):
    run = load_run(synthetic(tmp_path / "r", 50))
    sub = select(run, parse_steps("10:20"), ["l1.*", "a0"])
    assert sub.steps.tolist() == list(range(10, 20))
    assert [r.name for r in sub.rows] == ["l1.weight", "a0", "a0"]
    assert sub.metric("param", "grad_norm").shape == (10, 1)
    assert sub.metric("act", "mean").shape == (10, 1)
    assert select(run, parse_steps("100:"), None).num_steps == 0
    for bad in ("5", "a:b", "20:10"):
        with pytest.raises(ValueError, match="--steps"):
            parse_steps(bad)
