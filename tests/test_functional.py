"""functional: the eager statistics against float64 references written out here."""

from __future__ import annotations

import pytest
import torch

from gradscope import functional as F


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_grad_stats_against_float64(dtype):
    ts = [torch.randn(7, 5).to(dtype), torch.randn(1).to(dtype), torch.randn(300).to(dtype) * 1e3]
    norm, maxabs, nonfinite = F.grad_stats(ts)
    for i, t in enumerate(ts):
        t64 = t.double()
        assert norm[i].item() == pytest.approx(t64.norm().item(), rel=1e-5)
        assert maxabs[i].item() == pytest.approx(t64.abs().max().item(), rel=1e-6)
    assert norm.dtype == torch.float32 and nonfinite.tolist() == [0, 0, 0]


def test_grad_stats_counts_and_flags_nonfinite():
    t = torch.randn(10)
    t[2], t[5] = float("nan"), float("inf")
    _, _, exact = F.grad_stats([t, torch.randn(3)])
    _, _, flag = F.grad_stats([t, torch.randn(3)], exact_nonfinite=False)
    assert exact.tolist() == [2, 0] and flag.tolist() == [1, 0]


def test_grad_stats_empty():
    norm, maxabs, nonfinite = F.grad_stats([])
    assert norm.numel() == maxabs.numel() == nonfinite.numel() == 0
    assert F.total_norm(norm).item() == 0


@pytest.mark.parametrize("module_type", ["ReLU", "Sigmoid", "Tanh", "Linear"])
def test_activation_stats_against_float64(module_type):
    fn = {"ReLU": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Linear": lambda x: x}[module_type]
    ys = [fn(torch.randn(32, 16) * 4), fn(torch.randn(8, 16) * 4)]  # a module called twice in a step
    stats = F.activation_stats(sum(F.activation_sums(y, module_type) for y in ys))
    y = torch.cat([y.flatten() for y in ys]).double()
    assert stats["mean"].item() == pytest.approx(y.mean().item(), rel=1e-6)
    assert stats["std"].item() == pytest.approx(y.std(correction=0).item(), rel=1e-5)
    zeros = (y == 0).double().mean().item() if module_type == "ReLU" else 0.0
    assert stats["zero_frac"].item() == pytest.approx(zeros)
    if module_type in ("Sigmoid", "Tanh"):
        c, h = F.BOUNDED_RANGES[module_type]
        sat = ((y - c).abs() > h * F.SATURATION_MARGIN).double().mean().item()
        assert sat > 0.05 and stats["sat_frac"].item() == pytest.approx(sat)
    assert stats["nonfinite"].item() == 0


def test_activation_nonfinite_flag_and_unmeasured_rows():
    y = torch.randn(4, 4)
    y[1, 1] = float("nan")
    sums = torch.stack([F.activation_sums(y), torch.zeros(F.ACT_N, dtype=torch.float64)])
    stats = F.activation_stats(sums)
    assert stats["nonfinite"][0].item() == 1
    assert torch.isnan(stats["mean"][1]) and torch.isnan(stats["nonfinite"][1])


@pytest.mark.parametrize("shape, dim", [((6, 5), 1), ((3, 4, 5), 2), ((2, 5, 3, 3), 1)])
def test_unit_active_per_unit(shape, dim):
    y = torch.relu(torch.randn(shape))
    y.select(dim, 2).zero_()  # unit 2 never fires
    alive = F.unit_active(y)
    assert alive.shape == (shape[dim],)
    assert not alive[2] and alive.sum() == shape[dim] - 1


def test_unitwise_norm_matches_rows_and_filters():
    w = torch.randn(4, 3, 2, 2)
    ref = w.flatten(1).norm(dim=1)
    assert torch.allclose(F.unitwise_norm(w).flatten(), ref)
    b = torch.randn(5)
    assert torch.equal(F.unitwise_norm(b), b.abs())


def test_cpu_maxabs_matches_inf_norm_including_nan_and_empty():
    ts = [torch.randn(40, 3), -torch.rand(5) * 9, torch.empty(0), torch.randn(7).bfloat16()]
    ts[0][2, 1] = float("nan")
    got = F.norms(ts, float("inf"))
    ref = [t.double().abs().max().item() if t.numel() else 0.0 for t in ts]
    assert torch.isnan(got[0])
    assert got[1:].tolist() == pytest.approx(ref[1:], rel=1e-6)
