"""Analysis speed on a large synthetic run: 100k steps x 500 rows (250 param, 125 act, 125 flow).

Not part of the normal test suite (testpaths = tests). Run:

    pytest benchmarks/test_analyze_bench.py --benchmark-only -s

The run directory is written once per session with RunWriter in 1000 chunks of 100 steps (what
watch(flush_every=100) produces), with realistic noise, a few spikes and a vanishing trend, so
every detector does its full work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from gradscope.diagnose import diagnose
from gradscope.report import dumps, report_json
from gradscope.run import format as fmt
from gradscope.run.reader import load_run
from gradscope.run.writer import RunWriter

STEPS, CHUNK = 100_000, 100
N_PARAM, N_ACT = 250, 125  # + N_ACT flow rows = 500 rows
SPIKES = (20_000, 55_555, 90_001)


def build(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [fmt.Row(f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}", "param", "Linear",
                    [64, 64] if i % 2 == 0 else [64], i // 2) for i in range(N_PARAM)]
    rows += [fmt.Row(f"layers.{i}.act", "act", "ReLU", [], i) for i in range(N_ACT)]
    rows += [fmt.Row(f"layers.{i}.act", "flow", "ReLU", [], i) for i in range(N_ACT)]
    w = RunWriter(path)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    depth_scale = (10.0 ** np.linspace(-4, 0, N_PARAM)).astype(np.float32)  # vanishing with depth
    flow_scale = (10.0 ** np.linspace(-4, 0, N_ACT)).astype(np.float32)
    for start in range(0, STEPS, CHUNK):
        t = np.arange(start, start + CHUNK)
        noise = np.exp(rng.normal(0, 0.3, (CHUNK, N_PARAM))).astype(np.float32)
        gn = depth_scale * noise
        for s in SPIKES:
            if start <= s < start + CHUNK:
                gn[s - start] *= 200
        ur = np.full((CHUNK, N_PARAM), np.nan, np.float32)
        ur[::10] = 1e-3
        act = {m: rng.uniform(0, 0.2, (CHUNK, N_ACT)).astype(np.float32) for m in fmt.METRICS["act"]}
        act["nonfinite"][:] = 0
        chunk = {"step": t, "param/grad_norm": gn, "param/grad_max": gn / 4,
                 "param/grad_nonfinite": np.zeros_like(gn), "param/weight_norm": np.ones_like(gn),
                 "param/update_ratio": ur,
                 "flow/norm": flow_scale * np.exp(rng.normal(0, 0.3, (CHUNK, N_ACT))).astype(np.float32),
                 "flow/nonfinite": np.zeros((CHUNK, N_ACT), np.float32),
                 "scalar/grad_norm": np.sqrt((gn.astype(np.float64) ** 2).sum(1)).astype(np.float32),
                 "scalar/lr": np.full(CHUNK, 1e-3, np.float32)}
        chunk.update({f"act/{m}": a for m, a in act.items()})
        w.write_chunk(chunk)
    w.close()
    return path


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t0 = time.perf_counter()
    path = build(tmp_path_factory.mktemp("bench") / "run")
    print(f"\nwrote {STEPS} steps x {N_PARAM + 2 * N_ACT} rows in {time.perf_counter() - t0:.1f} s")
    return path


def test_load(benchmark, big_run):
    run = benchmark.pedantic(load_run, args=(big_run,), rounds=3, iterations=1)
    assert run.num_steps == STEPS and len(run.rows) == 500


def test_diagnose(benchmark, big_run):
    run = load_run(big_run)
    findings = benchmark.pedantic(diagnose, args=(run,), rounds=3, iterations=1)
    kinds = {f.kind for f in findings}
    assert "vanishing_gradient" in kinds
    assert sorted(f.evidence["step"] for f in findings if f.kind == "gradient_spike") == list(SPIKES)


def test_analyze_end_to_end(benchmark, big_run):
    """load_run + diagnose + JSON report: what `gradscope analyze RUN --format json` does."""

    def analyze() -> str:
        run = load_run(big_run)
        return dumps(report_json(run, diagnose(run)))

    out = benchmark.pedantic(analyze, rounds=3, iterations=1)
    assert json.loads(out)["summary"]["steps"] == STEPS
    # best of 3: the least disturbed by other processes on a shared machine
    assert benchmark.stats.stats.min < 10.0, "analysing 100k steps x 500 rows must take under 10 s"
