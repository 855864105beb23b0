"""Fused clip-norm kernels (Triton interpreter on CPU) and their eager mirror vs float64 and torch."""

from __future__ import annotations

import math

import pytest
import torch
from f64_refs import STORE_TOL, TOL, TORCH_TOL, assert_close, coef64, f64_stats, make_grads
from gradscope.kernels import clip_norm as K
from gradscope.kernels import reference as R

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CHUNK = 64  # small chunks: block and chunk boundaries at a few hundred elements
CASES = {
    "empty": [],
    "one": [1],
    "bounds": [63, 64, 65, 127, 128, 129, 0, 191],
    "shapes": [(3, 5), (2, 3, 4), (1,), (7, 9)],
}


def run(impl: str, grads, max_norm: float, p: float = 2.0, fold: bool = False):
    if impl == "kernel":
        return K.clip_norm_(grads, max_norm, p, fold=fold, chunk=CHUNK)
    return R.clip_norm_(grads, max_norm, p, chunk=CHUNK, fold=fold)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("clip", [True, False])
def test_matches_float64(impl, dtype, case, clip):
    grads = make_grads(CASES[case], dtype)
    before = [g.clone() for g in grads]
    ref = f64_stats(before, 2.0)
    max_norm = float(ref["total"]) * 0.5 if clip else float(ref["total"]) * 2 + 1
    out = run(impl, grads, max_norm)
    tol = TOL[dtype]
    assert out.total.dtype == torch.float32 and out.norm.dtype == torch.float32
    assert_close(out.total, ref["total"], tol)
    assert_close(out.norm, ref["norm"], tol)
    assert_close(out.maxabs, ref["maxabs"], tol)
    assert_close(out.nonfinite, ref["nonfinite"], 0)
    c = coef64(ref["total"], max_norm)
    assert_close(out.coef, torch.tensor(c), tol)
    assert float(out.found_inf) == 0.0
    for g, b in zip(grads, before, strict=True):
        if clip:
            assert_close(g, b.double() * c, STORE_TOL[dtype], atol=1e-6)
        else:
            assert torch.equal(g, b)  # coef >= 1: not written at all


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("p", [float("inf"), 1.0, 3.0])
def test_norm_types(impl, p):
    grads = make_grads([70, 5, 130], torch.float32)
    ref = f64_stats(grads, p)
    out = run(impl, grads, 0.1, p, fold=True)
    assert_close(out.total, ref["total"], 2e-5)
    assert_close(out.norm, ref["norm"], 2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_tensors_vs_torch(dtype):
    sizes = torch.randint(1, 200, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    grads = make_grads(sizes, dtype)
    params = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in sizes]
    p_before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    t_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(t_params, grads, strict=True):
        p.grad = g.clone()
    out = K.clip_norm_([p.grad for p in params], 1.0, chunk=256)
    expected = torch.nn.utils.clip_grad_norm_(t_params, 1.0)
    assert_close(out.total, expected.float(), TORCH_TOL[dtype])
    for p, t, b in zip(params, t_params, p_before, strict=True):
        assert_close(p.grad, t.grad, STORE_TOL[dtype] + TORCH_TOL[dtype], atol=1e-6)
        assert torch.equal(p.detach(), b)  # parameters untouched


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_nan_and_inf_follow_torch(impl):
    for bad in (math.nan, math.inf):
        grads = make_grads([100, 10, 70], torch.float32)
        grads[0][65] = bad
        grads[2][3] = -math.inf
        expected = [g.clone() for g in grads]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
        for p, g in zip(params, expected, strict=True):
            p.grad = g
        t_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        out = run(impl, grads, 1.0)
        assert_close(out.total, t_norm, 1e-6)
        assert float(out.found_inf) == 1.0
        assert out.nonfinite.tolist() == [1.0, 0.0, 1.0]
        assert math.isnan(out.maxabs[0]) == math.isnan(bad) and math.isinf(out.maxabs[2])
        for g, e in zip(grads, params, strict=True):
            assert_close(g, e.grad, 1e-6)


def test_negative_control_detects_a_perturbed_reference():
    grads = make_grads([100, 33], torch.float32)
    ref = f64_stats(grads, 2.0)
    out = K.clip_norm_(grads, 1e9, chunk=CHUNK)
    bad = ref["norm"].clone()
    bad[1] *= 1 + 1e-3
    with pytest.raises(AssertionError):
        assert_close(out.norm, bad, TOL[torch.float32])
    with pytest.raises(AssertionError):
        assert_close(out.total, ref["total"] * (1 + 1e-4), TOL[torch.float32])


def test_fold_leaves_grads_and_gives_grad_scale():
    grads = make_grads([100, 7], torch.bfloat16)
    before = [g.clone() for g in grads]
    out = K.clip_norm_(grads, 0.5, fold=True, chunk=CHUNK)
    assert all(torch.equal(g, b) for g, b in zip(grads, before, strict=True))
    assert_close(out.grad_scale, 1.0 / out.coef, 1e-6)
    assert float(out.coef) < 1.0 and float(out.found_inf) == 0.0


def test_deterministic_and_kernel_equals_reference():
    grads = make_grads([300, 129, 1], torch.float32)
    a = K.norm_stats(grads, 1.0, chunk=CHUNK)
    b = K.norm_stats(grads, 1.0, chunk=CHUNK)
    assert torch.equal(a.norm, b.norm) and torch.equal(a.total, b.total)
    r = R.clip_norm_(grads, 1.0, chunk=CHUNK, fold=True)
    assert_close(a.norm, r.norm, 1e-6)


def test_tables_cached_and_refreshed_on_storage_change():
    grads = make_grads([100, 20], torch.float32)
    plan = K.plan_for(grads, CHUNK)
    addrs = plan.addrs
    assert K.plan_for(grads, CHUNK) is plan and plan.addrs is addrs  # nothing rebuilt
    grads[1] = torch.randn(20)  # new storage, same shape: only the address table changes
    plan2 = K.plan_for(grads, CHUNK)
    assert plan2 is plan and plan2.addrs is not addrs
    assert plan2.layout is plan.layout
    out = K.norm_stats(grads, 1.0, chunk=CHUNK)
    assert_close(out.norm, f64_stats(grads, 2.0)["norm"], 1e-5)
    grads.append(torch.randn(3))  # new shapes: a new layout
    assert K.plan_for(grads, CHUNK).layout is not plan.layout


def test_mixed_dtypes_one_norm():
    grads = (
        make_grads([100], torch.float32) + make_grads([70], torch.bfloat16) + make_grads([9], torch.float16)
    )
    ref = f64_stats(grads, 2.0)
    out = K.clip_norm_(grads, 1.0, chunk=CHUNK)
    assert_close(out.total, ref["total"], 1e-5)
    assert_close(out.norm, ref["norm"], 1e-5)


def test_unsupported_inputs_raise():
    with pytest.raises(TypeError, match="fp32, bf16 and fp16"):
        K.norm_stats([torch.randn(4, dtype=torch.float64)], 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        K.norm_stats([torch.randn(4, 4).t()], 1.0)
    with pytest.raises(ValueError, match="norm_type"):
        K.norm_stats([torch.randn(4)], 1.0, p=0.0)
