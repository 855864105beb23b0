"""Cost of live diagnosis: a watched run with it on / the same run with it off, interleaved A/B.

    pytest benchmarks/test_live_overhead.py --benchmark-only -s

Both copies are watched (everything, every step); only ``live`` (and ``stop_on``) differ, so the
ratio is what live diagnosis adds to a step: the per-flush NaN/Inf check and the rate-limited
diagnoses on the writer thread, and with ``stop_on`` the flush's wait for the check's verdict.
``GRADSCOPE_BENCH_BURN=N`` (default 1) keeps N more processes spinning meanwhile, so the writer
thread has no idle core to run on for free (the training step uses the other one: one torch thread).
The ``long`` case runs 3000 steps of a tiny model with ``flush_every=10`` and reports how often the
full diagnosis ran and its share of the wall time (bounded by BUDGET however long the run).
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import statistics
import time

import pytest
import torch
from test_overhead import WARMUP, _step, deep_mlp
from torch import nn

import gradscope
from gradscope.diagnose import live as live_mod

STEPS = int(os.environ.get("GRADSCOPE_BENCH_STEPS", "40"))
BURN = int(os.environ.get("GRADSCOPE_BENCH_BURN", "1"))


def tiny_mlp():  # noqa: ANN201
    """4 x Linear(64)+ReLU, batch 64: ~1 ms a step, where a per-flush cost shows most."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), *[m for _ in range(3) for m in (nn.Linear(64, 64), nn.ReLU())],
                          nn.Linear(64, 2))
    x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
    return model, lambda m: nn.functional.cross_entropy(m(x), y)


MODELS = {"mlp": deep_mlp, "tiny": tiny_mlp}
# stop_on: the flush waits for its NaN/Inf verdict. Not "error": the deep MLP (default init) has
# genuinely vanishing gradients, which stop_on="error" stops at the first diagnosis.
# control: live off on both sides (an A/A run: this machine's noise).
CASES = {"report": {}, "stop_on": {"stop_on": ["nonfinite"]}, "control": {"live": False}}


def _spin(stop) -> None:  # noqa: ANN001
    while not stop.is_set():
        sum(range(10000))


class Burners:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(n)]

    def __enter__(self):  # noqa: ANN204
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.stop.set()
        for p in self.procs:
            p.join(5)


def live_ratio(make_model, tmp_path, flush_every: int, case: dict, steps: int) -> dict:  # noqa: ANN001
    torch.set_num_threads(1)
    base, loss_fn = make_model()
    other = copy.deepcopy(base)
    opt_a = torch.optim.AdamW(base.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(other.parameters(), lr=1e-4)
    kw = {"tensorboard": False, "flush_every": flush_every}
    off = gradscope.watch(base, opt_a, log_dir=tmp_path / "off", live=False, **kw)
    on = gradscope.watch(other, opt_b, log_dir=tmp_path / "on", **case, **kw)
    ta, tb = [], []
    with Burners(BURN):
        for i in range(WARMUP + steps):
            a = _step(base, opt_a, loss_fn, lambda loss: off.log(loss=loss))
            b = _step(other, opt_b, loss_fn, lambda loss: on.log(loss=loss))
            if i >= WARMUP:
                ta.append(a)
                tb.append(b)
        t0 = time.perf_counter()
        off.close()
        t1 = time.perf_counter()
        on.close()
        t2 = time.perf_counter()
    sink = on._stopper.live
    diagnoses = sink.diagnoses if sink is not None else 0
    ratios = [b / a for a, b in zip(ta, tb, strict=True)]
    return {"off_ms": statistics.median(ta) * 1e3, "on_ms": statistics.median(tb) * 1e3,
            "ratio": statistics.median(ratios), "ratio_of_totals": sum(tb) / sum(ta),
            "diagnoses": diagnoses, "close_off_ms": (t1 - t0) * 1e3, "close_on_ms": (t2 - t1) * 1e3}


@pytest.mark.parametrize("flush_every", [10, 100])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("model", list(MODELS))
def test_live_overhead(benchmark, model, case, flush_every, tmp_path):
    steps = STEPS if model == "mlp" else max(STEPS, 20) * 25
    result = benchmark.pedantic(live_ratio, args=(MODELS[model], tmp_path, flush_every, CASES[case], steps),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{model:5s} {case:8s} flush_every={flush_every:<4d} off {result['off_ms']:7.2f} ms  "
          f"on {result['on_ms']:7.2f} ms  ratio {result['ratio']:.3f} (of totals {result['ratio_of_totals']:.3f}); "
          f"{result['diagnoses']} diagnoses; close {result['close_off_ms']:.0f} / {result['close_on_ms']:.0f} ms")


@pytest.mark.parametrize("min_seconds", [live_mod.MIN_SECONDS, 0.0])
def test_long_run_diagnosis_share(benchmark, tmp_path, monkeypatch, min_seconds):
    """3000 steps, flush_every=10: 300 flushes; the full diagnosis runs a bounded number of times
    (with MIN_SECONDS=0 only BUDGET bounds it: its share of the wall time stays near BUDGET)."""
    monkeypatch.setattr(live_mod, "MIN_SECONDS", min_seconds)

    def run() -> dict:
        torch.set_num_threads(1)
        model, loss_fn = tiny_mlp()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        with Burners(BURN), gradscope.watch(model, opt, log_dir=tmp_path / "long", flush_every=10,
                                            tensorboard=False) as scope:
            for _ in range(3000):
                _step(model, opt, loss_fn, lambda loss: scope.log(loss=loss))
            sink = scope._stopper.live
            wall = time.perf_counter() - t0
            busy, n = sink.busy_seconds, sink.diagnoses
        return {"wall_s": wall, "diagnoses_during": n, "busy_s": busy, "share": busy / wall,
                "min_seconds": live_mod.MIN_SECONDS, "budget": live_mod.BUDGET}

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\nlong run, MIN_SECONDS={min_seconds}: {result['wall_s']:.1f} s, "
          f"{result['diagnoses_during']} diagnoses during the run, "
          f"{result['busy_s'] * 1e3:.0f} ms in them ({result['share']:.2%} of the wall time)")


def test_chunk_check_cost(benchmark):
    """The per-flush work on the writer thread: the NaN/Inf check of one chunk of 100 steps with 500
    param rows and 300 act and flow rows (O(chunk), whatever the length of the run)."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"step": np.arange(100), "param/grad_nonfinite": np.zeros((100, 500), np.float32),
              "act/nonfinite": np.zeros((100, 300), np.float32), "flow/nonfinite": np.zeros((100, 300), np.float32),
              "scalar/loss": rng.random(100).astype(np.float32), "scalar/grad_norm": rng.random(100).astype(np.float32)}
    check = live_mod.NonfiniteCheck()
    benchmark(check, arrays)
    print(f"\nchunk check, 100 steps x 1100 rows: {benchmark.stats.stats.median * 1e6:.0f} us")
