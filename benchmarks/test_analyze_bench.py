"""Analysis speed on a large synthetic run: 100k steps x 500 rows (250 param, 125 act, 125 flow).

Not part of the normal test suite (testpaths = tests). Run:

    pytest benchmarks/test_analyze_bench.py --benchmark-only -s
    python benchmarks/test_analyze_bench.py curve    # steps -> seconds table for README.md

The run directory is written once per session with RunWriter in 1000 chunks of 100 steps (what
watch(flush_every=100) produces), with realistic noise, a few spikes and a vanishing trend, so
every detector does its full work. RunWriter.close() then merges the chunks into RUN/merged/ (the
time is printed); the chunk-only reader (a killed run) is timed with merged/ moved aside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from gradscope.diagnose import diagnose
from gradscope.report.text import dumps, report_json
from gradscope.run import format as fmt
from gradscope.run.reader import load_run
from gradscope.run.writer import RunWriter

STEPS, CHUNK = 100_000, 100
N_PARAM, N_ACT = 250, 125  # + N_ACT flow rows = 500 rows
SPIKES = (20_000, 55_555, 90_001)


def build(path: Path, steps: int = STEPS, n_param: int = N_PARAM, n_act: int = N_ACT,
          spikes: tuple[int, ...] = SPIKES, compact: bool = True) -> Path:
    """Write the synthetic run; with ``compact`` RunWriter.close() merges it (as watch() does)."""
    rng = np.random.default_rng(0)
    rows = [fmt.Row(f"layers.{i // 2}.{'weight' if i % 2 == 0 else 'bias'}", "param", "Linear",
                    [64, 64] if i % 2 == 0 else [64], i // 2) for i in range(n_param)]
    rows += [fmt.Row(f"layers.{i}.act", "act", "ReLU", [], i) for i in range(n_act)]
    rows += [fmt.Row(f"layers.{i}.act", "flow", "ReLU", [], i) for i in range(n_act)]
    w = RunWriter(path, compact=compact)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    depth_scale = (10.0 ** np.linspace(-4, 0, n_param)).astype(np.float32)  # vanishing with depth
    flow_scale = (10.0 ** np.linspace(-4, 0, n_act)).astype(np.float32)
    for start in range(0, steps, CHUNK):
        t = np.arange(start, start + CHUNK)
        noise = np.exp(rng.normal(0, 0.3, (CHUNK, n_param))).astype(np.float32)
        gn = depth_scale * noise
        for s in spikes:
            if start <= s < start + CHUNK:
                gn[s - start] *= 200
        ur = np.full((CHUNK, n_param), np.nan, np.float32)
        ur[::10] = 1e-3
        act = {m: rng.uniform(0, 0.2, (CHUNK, n_act)).astype(np.float32) for m in fmt.METRICS["act"]}
        act["nonfinite"][:] = 0
        chunk = {"step": t, "param/grad_norm": gn, "param/grad_max": gn / 4,
                 "param/grad_nonfinite": np.zeros_like(gn), "param/weight_norm": np.ones_like(gn),
                 "param/update_ratio": ur,
                 "flow/norm": flow_scale * np.exp(rng.normal(0, 0.3, (CHUNK, n_act))).astype(np.float32),
                 "flow/nonfinite": np.zeros((CHUNK, n_act), np.float32),
                 "scalar/grad_norm": np.sqrt((gn.astype(np.float64) ** 2).sum(1)).astype(np.float32),
                 "scalar/lr": np.full(CHUNK, 1e-3, np.float32)}
        chunk.update({f"act/{m}": a for m, a in act.items()})
        w.write_chunk(chunk)
    t0 = time.perf_counter()
    w.close()
    if compact:
        print(f"\nRunWriter.close() merged {steps} steps x {n_param + 2 * n_act} rows in "
              f"{time.perf_counter() - t0:.1f} s")
    return path


@contextmanager
def chunks_only(path: Path) -> Iterator[Path]:
    """The run as a killed process leaves it: merged/ moved aside for the duration."""
    (path / "merged").rename(path / "merged.off")
    try:
        yield path
    finally:
        (path / "merged.off").rename(path / "merged")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t0 = time.perf_counter()
    path = build(tmp_path_factory.mktemp("bench") / "run")
    print(f"wrote {STEPS} steps x {N_PARAM + 2 * N_ACT} rows in {time.perf_counter() - t0:.1f} s")
    return path


def test_load(benchmark, big_run):
    """The merged run: one memory map per array."""
    run = benchmark.pedantic(load_run, args=(big_run,), rounds=3, iterations=1)
    assert run.num_steps == STEPS and len(run.rows) == 500 and run.warnings == []


def test_load_chunks(benchmark, big_run):
    """1000 chunks, no merged/ (a killed or running process): scan, allocate once, fill in place."""
    with chunks_only(big_run):
        run = benchmark.pedantic(load_run, args=(big_run,), rounds=3, iterations=1)
    assert run.num_steps == STEPS and len(run.rows) == 500 and run.warnings == []


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


def test_analyze_chunks_end_to_end(benchmark, big_run):
    """The same on the chunks only: what analysing a killed 100k-step run costs."""

    def analyze() -> str:
        run = load_run(big_run)
        return dumps(report_json(run, diagnose(run)))

    with chunks_only(big_run):
        out = benchmark.pedantic(analyze, rounds=3, iterations=1)
    assert json.loads(out)["summary"]["steps"] == STEPS


# -- scaling curve: python benchmarks/test_analyze_bench.py curve [DIR] --------------------------------

CURVE = [(10_000, 50), (100_000, 50), (1_000_000, 50), (10_000, 500), (100_000, 500)]


_CLI = """
import resource, sys
from gradscope.cli import main
main(["analyze", sys.argv[1], "--format", "json"], standalone_mode=False)
print("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _cli(path: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of `gradscope analyze PATH --format json` in a fresh process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CLI, str(path)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    return wall, int(out.stderr.split("maxrss")[-1]) / 1e6


def _best(f, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def curve(root: Path) -> None:
    print("| steps | rows | disk | close() merge | load_run merged | load_run chunks | analyze merged (RSS) "
          "| analyze chunks (RSS) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for steps, nrows in CURVE:
        n_act = nrows // 4
        n_param = nrows - 2 * n_act
        path = root / f"run-{steps}-{nrows}"
        shutil.rmtree(path, ignore_errors=True)
        spikes = tuple(int(steps * f) for f in (0.2, 0.55555, 0.90001))
        build(path, steps, n_param, n_act, spikes, compact=False)
        t0 = time.perf_counter()
        from gradscope.run.compact import compact_run

        compact_run(path)
        merge = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in (path / "chunks").iterdir()) / 1e6
        lm = _best(partial(load_run, path))
        am = min((_cli(path) for _ in range(2)), key=lambda x: x[0])
        with chunks_only(path):
            lc = _best(partial(load_run, path), 2)
            ac = min((_cli(path) for _ in range(2)), key=lambda x: x[0])
        print(f"| {steps:,} | {n_param + 2 * n_act} | {disk:.0f} MB | {merge:.1f} s | {lm:.2f} s | {lc:.1f} s "
              f"| {am[0]:.1f} s ({am[1]:.2f} GB) | {ac[0]:.1f} s ({ac[1]:.2f} GB) |", flush=True)
        shutil.rmtree(path)


if __name__ == "__main__" and sys.argv[1:2] == ["curve"]:
    curve(Path(sys.argv[2]) if len(sys.argv) > 2 else Path(os.environ.get("TMPDIR", "/tmp")))
