"""Fused clip-norm kernels (Triton interpreter on CPU) and their eager mirror vs float64 and torch."""

from __future__ import annotations

import math

import pytest
import torch
from f64_refs import DEV, STORE_TOL, TOL, TORCH_TOL, assert_close, coef64, f64_stats, make_grads
from gradscope.kernels import clip_norm as K
from gradscope.kernels import reference as R

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
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
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert not grads or (out.total.dtype == acc and out.norm.dtype == acc)
    assert_close(out.total, ref["total"], tol)
    assert_close(out.norm, ref["norm"], tol)
    assert_close(out.maxabs, ref["maxabs"], tol)
    assert_close(out.nonfinite, ref["nonfinite"], 0)
    c = coef64(ref["total"], max_norm)
    assert_close(out.coef, torch.tensor(c, dtype=torch.float64), tol)
    assert float(out.found_inf) == 0.0
    for g, b in zip(grads, before, strict=True):
        if clip:
            assert_close(g, b.double() * c, STORE_TOL[dtype], atol=1e-6)
        else:
            assert torch.equal(g, b)  # coef >= 1: not written at all


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("p", [float("inf"), 1.0, 3.0, 0.5, 0.0, -1.0, -0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norm_types(impl, p, dtype):
    grads = make_grads([70, 5, 130], dtype)
    grads[2][7] = 0.0  # a zero: 0**p is inf for p < 0, and p = 0 counts nonzeros
    ref = f64_stats(grads, p)
    out = run(impl, grads, 0.1, p, fold=True)
    expected = torch.nn.utils.get_total_norm([g.double() for g in grads], p)  # torch's own rule per tensor
    assert_close(out.total, expected, 2e-5)
    assert_close(out.norm, ref["norm"], 2e-5)


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("p", [3.0, 0.5, 1.0, -1.0])
def test_general_p_carries_nan(impl, p):
    """A NaN element makes the p-norm NaN (Σ|x|^p is NaN), as in torch: nothing drops it."""
    grads = make_grads([100, 40], torch.float32)
    grads[1][5] = math.nan
    out = run(impl, grads, 1.0, p, fold=True)
    assert math.isnan(float(out.total)) and float(out.found_inf) == 1.0
    assert math.isnan(float(out.norm[1])) and math.isfinite(float(out.norm[0]))
    assert math.isnan(float(torch.nn.utils.get_total_norm([g.clone() for g in grads], p)))


def test_dense_layouts_and_unaligned_starts():
    """channels_last and transposed grads are dense: the kernel reads their storage; a grad that starts
    off a 16-byte boundary takes the unaligned path; both equal torch."""
    base = make_grads([(4 * 130 + 1,)], torch.float32)[0]
    grads = [
        make_grads([(3, 5, 4, 6)], torch.bfloat16)[0].to(memory_format=torch.channels_last),
        make_grads([(33, 70)], torch.float32)[0].t(),
        base[1:].view(4, 130),  # storage offset of one element: 4 bytes off alignment
    ]
    before = base[0].clone()
    plan = K.plan_for(grads, CHUNK)
    assert plan.problem is None and plan.aligned == [True, False]  # groups: bf16, then fp32
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    expected = torch.nn.utils.clip_grad_norm_(params, 0.5)
    out = K.clip_norm_(grads, 0.5, chunk=CHUNK)
    assert_close(out.total, expected.float(), 8e-3)
    for g, p in zip(grads, params, strict=True):
        assert_close(g, p.grad, 2e-2, atol=1e-6)
    assert torch.equal(base[0], before)  # the element before the unaligned view is not written


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_tensors_vs_torch(dtype):
    sizes = torch.randint(1, 200, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    grads = make_grads(sizes, dtype)
    params = [torch.nn.Parameter(torch.randn(s, device=DEV).to(dtype)) for s in sizes]
    p_before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    t_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(t_params, grads, strict=True):
        p.grad = g.clone()
    out = K.clip_norm_([p.grad for p in params], 1.0, chunk=256)
    expected = torch.nn.utils.clip_grad_norm_(t_params, 1.0)
    assert_close(out.total, expected, TORCH_TOL[dtype])
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
    grads[1] = torch.randn(20, device=DEV)  # new storage, same shape: a new address table, same layout
    plan2 = K.plan_for(grads, CHUNK)
    assert plan2 is not plan and plan2.addrs is not addrs
    assert plan2.layout is plan.layout
    out = K.norm_stats(grads, 1.0, chunk=CHUNK)
    assert_close(out.norm, f64_stats(grads, 2.0)["norm"], 1e-5)
    grads.append(torch.randn(3, device=DEV))  # new shapes: a new layout
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
    with pytest.raises(TypeError, match="fp32, bf16, fp16 and fp64"):
        K.norm_stats([torch.ones(4, dtype=torch.int32, device=DEV)], 1.0)
    with pytest.raises(ValueError, match="dense"):
        K.norm_stats([torch.randn(4, 8, device=DEV)[:, ::2]], 1.0)
    with pytest.raises(ValueError, match="norm type"):
        K.norm_stats([torch.randn(4, device=DEV)], 1.0, p=math.nan)


def test_empty_list():
    out = K.clip_norm_([], 1.0)
    assert float(out.total) == 0.0 and float(out.coef) == 1.0 and out.norm.numel() == 0


def test_default_device_does_not_leak_into_the_tables():
    """Under torch.set_default_device(...) the address table is still built on the CPU (then pinned and copied
    on CUDA) and the layout on the grads' device; "meta" would break any table that followed the default."""
    grads = make_grads([300, 17], torch.float32)
    expected = f64_stats(grads, 2.0)
    K._PLANS.clear()
    K._LAYOUTS.clear()
    torch.set_default_device("meta")
    try:
        out = K.clip_norm_(grads, 1e9, chunk=CHUNK)
    finally:
        torch.set_default_device(None)
    assert out.total.device == grads[0].device
    assert_close(out.total, expected["total"], 1e-5)
