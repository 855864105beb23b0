"""Grouped per-tensor statistics (the parameter side's measuring pass) against float64, and the
sentinel gradient hooks that replace one Python hook per parameter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.scope.gradstats import SMALL, GroupedStats


def _ref(tensors):
    norm = torch.stack([t.double().norm() for t in tensors])
    mx = torch.stack([t.double().abs().max() if t.numel() else torch.zeros((), dtype=torch.float64)
                      for t in tensors])
    return norm, mx


@pytest.mark.parametrize("maxabs", [True, False])
def test_grouped_stats_match_float64_in_input_order(maxabs):
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (8,), (8, 8), (3,), (8,), (5, 7), (SMALL + 1,), (0,), (8, 8), (2, 2, 2)]
    tensors = [torch.randn(s, generator=g) * (10.0 ** (i % 4 - 2)) for i, s in enumerate(shapes)]
    tensors[2][1, 3] = float("nan")
    tensors[4][0] = float("-inf")
    tensors.append(torch.randn(8, 8, dtype=torch.float64, generator=g))  # promoted with the fp32 ones
    tensors.append(torch.randn(8, 8, generator=g).to(torch.bfloat16))
    stats = GroupedStats(torch.device("cpu"))
    for _ in range(2):  # the second call runs on the cached layout
        norm, mx = stats.stats(tensors, "k", maxabs=maxabs)
        ref_norm, ref_mx = _ref(tensors)
        assert norm.dtype == torch.float32 and norm.shape == (len(tensors),)
        np.testing.assert_allclose(norm.double().numpy(), ref_norm.numpy(), rtol=2e-6)
        if maxabs:
            np.testing.assert_allclose(mx.double().numpy(), ref_mx.numpy(), rtol=1e-7)
        else:
            assert mx is None
    assert len(stats._layouts) == 1 and stats._layouts["k"].groups, "same-size tensors are grouped"


def _hooked(params):
    return sum(len(p._post_accumulate_grad_hooks or {}) for p in params)


def test_gradient_hooks_shrink_to_sentinels_and_relearn_when_a_backward_misses_them(run_dir):
    """After the first backward only a few parameters keep a gradient hook; a backward through other
    parameters only is still measured (at the optimizer step) and the hooks learn again."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Sequential(*[nn.Linear(4, 4) for _ in range(12)]), "b": nn.Linear(4, 4)})
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    expected, hooks = [], []
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        for step in range(6):
            branch = model["a"] if step < 3 else model["b"]
            x = torch.randn(8, 4)
            branch(x).square().mean().backward()
            expected.append([p.grad.double().norm().item() if p.grad is not None else np.nan for p in params])
            opt.step()
            opt.zero_grad()
            hooks.append(_hooked(params))
        side = scope._param_side
        assert side.sentinels is not None and set(side.sentinels) <= {len(params) - 2, len(params) - 1}
    run = gradscope.load_run(run_dir)
    np.testing.assert_allclose(run.metric("param", "grad_norm"), expected, rtol=1e-5)
    assert hooks[0] <= 8 < len(params), hooks  # learned in the first backward
    assert hooks[3] == len(params), hooks  # step 3 (branch b) missed them: every parameter again
    assert hooks[4] <= 2, hooks  # learned on branch b
    assert _hooked(params) == 0  # close() removed them


def test_gradient_accumulation_is_measured_once_per_optimizer_step_with_sentinels(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(6, 6) for _ in range(10)])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with gradscope.watch(model, opt, log_dir=run_dir):
        for _ in range(3):
            for _ in range(3):  # micro-batches
                model(torch.randn(4, 6)).square().mean().backward()
            norms = torch.stack([p.grad.double().norm() for p in model.parameters()])
            expected.append(torch.linalg.vector_norm(norms).item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            opt.step()
            opt.zero_grad()
    run = gradscope.load_run(run_dir)
    np.testing.assert_allclose(run.scalars["grad_norm"], expected, rtol=1e-5)  # pre-clip, all micro-batches
