"""No memory growth while watching: 10k steps of a tiny model, RSS and live tensors sampled as it runs.

Not part of the normal test suite (testpaths = tests). Run:

    pytest benchmarks/test_memory.py -s

A leak of one small tensor per step (a kept hook handle, a growing list of device scalars, an event
per step) shows as a slope of >= 1 tensor/step; a leak of bytes per step as an RSS slope. The slopes
are least-squares fits over samples taken after a warm-up, so one-off allocations (the first flush,
the writer thread, numpy's first import paths) do not count.
"""

from __future__ import annotations

import gc
import os
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradscope

STEPS, EVERY, WARMUP = 10_000, 500, 2_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on every object touches deprecated module attributes
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def slope(xs: list[int], ys: list[float]) -> float:
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.timeout(600)
def test_no_growth_over_10k_steps(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    samples: list[tuple[int, int, int]] = []
    t0 = time.perf_counter()
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=100, tensorboard=False) as scope:
        for step in range(STEPS):
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=loss)
            if step % EVERY == 0:
                scope.flush(wait=True)  # compare like with like: nothing queued at a sample
                samples.append((step, rss_bytes(), live_tensors()))
    elapsed = time.perf_counter() - t0
    after = [(s, r, t) for s, r, t in samples if s >= WARMUP]
    steps = [s for s, _, _ in after]
    rss_slope = slope(steps, [r for _, r, _ in after])  # bytes per step
    tensor_slope = slope(steps, [t for _, _, t in after])  # tensors per step
    print(f"\n{STEPS} steps in {elapsed:.1f} s ({elapsed / STEPS * 1e3:.2f} ms/step)")
    print(f"RSS {samples[0][1] / 2**20:.1f} MiB at step 0, {after[0][1] / 2**20:.1f} MiB at step {WARMUP}, "
          f"{samples[-1][1] / 2**20:.1f} MiB at step {samples[-1][0]}; slope {rss_slope:.1f} B/step")
    print(f"live tensors {samples[0][2]} .. {samples[-1][2]}; slope {tensor_slope:.5f} /step")
    assert abs(tensor_slope) < 0.01, "live tensors grow with steps: something keeps a tensor per step"
    # 100 B/step = 1 MB over the 8k measured steps: allocator noise, not a per-step leak
    assert rss_slope < 100, f"RSS grows {rss_slope:.0f} bytes per step"
    assert scope.write_errors == []
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == STEPS
