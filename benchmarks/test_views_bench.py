"""Views at scale: close() of a 5,000-tensor watched run with and without TensorBoard, and --plots /
--html on a 5,000-row run (issue 16 item 3, issue 17).

Not part of the normal test suite (testpaths = tests). Run:

    pytest benchmarks/test_views_bench.py --benchmark-only -s

The model is 2,500 Linear(4, 4) layers in one nn.Sequential (5,000 parameter tensors), watched with
everything on (activations and flow too: 2,500 act + 2,500 flow rows), 30 steps with the default
flush_every; close() is timed alone (the last flush, the writer drain, compaction and the sinks).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.diagnose import diagnose

LAYERS, STEPS = 2500, 30


def _watched_close(path: Path, tensorboard: bool) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(LAYERS)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scope = gradscope.watch(model, opt, log_dir=path, tensorboard=tensorboard)
    for _ in range(STEPS):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        scope.log(loss=loss)
        opt.step()
    t = time.perf_counter()
    scope.close()
    took = time.perf_counter() - t
    assert scope.write_errors == []
    return took


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "wide"
    _watched_close(path, tensorboard=False)
    return gradscope.load_run(path)


@pytest.mark.parametrize("tensorboard", [False, True], ids=["no-tb", "tb"])
def test_close_5000_tensors(benchmark, tmp_path, tensorboard):
    runs = iter(range(100))
    took = benchmark.pedantic(lambda: _watched_close(tmp_path / f"r{next(runs)}", tensorboard), rounds=2,
                              iterations=1)
    print(f"\nclose() at {2 * LAYERS} tensors, tensorboard={tensorboard}: {took:.2f} s (last round)")


def test_plots_5000_rows(benchmark, wide_run, tmp_path):
    from gradscope.report.plots import write_plots

    found = diagnose(wide_run)
    benchmark.pedantic(lambda: write_plots(wide_run, found, tmp_path / "plots"), rounds=2, iterations=1)
    print(f"\n--plots on {len(wide_run.rows)} rows x {wide_run.num_steps} steps: "
          f"{benchmark.stats.stats.median:.2f} s")


def test_html_5000_rows(benchmark, wide_run, tmp_path):
    from gradscope.report.html import write_html

    found = diagnose(wide_run)
    benchmark.pedantic(lambda: write_html([(wide_run, found)], tmp_path / "r.html"), rounds=2, iterations=1)
    print(f"\n--html on {len(wide_run.rows)} rows: {benchmark.stats.stats.median:.2f} s")
