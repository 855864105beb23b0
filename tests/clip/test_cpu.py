"""gradscope.clip.cpu (the torch path on CPU) and the stats option, against float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from clip_helpers import close, mlp

import gradscope.clip as C
from gradscope.clip import backend as B
from gradscope.clip import cpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5, torch.float64: 1e-12}
SIZES = [(7, 9), (1,), (300,), (0,), (4, 3, 5), (2000,)]


def fresh(sizes, dtype, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    """Random tensors, no zeros, rounded to ``dtype`` (the float64 reference sees the same values)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in sizes:
        x = torch.randn(s, generator=g) * scale
        out.append(torch.where(x == 0, torch.full_like(x, 0.25), x).to(dtype))
    return out


def ref64(grads, p: float, max_norm: float) -> dict:
    """Per-tensor p-norm, max |g| (NaN if any NaN), NaN/Inf count, total and coefficient in float64."""
    d = [g.double().flatten() for g in grads]
    f64 = torch.float64
    norm = torch.tensor([float(torch.linalg.vector_norm(x, p)) if x.numel() else 0.0 for x in d], dtype=f64)
    maxabs = torch.tensor(
        [float(x.abs().max()) if x.numel() and not x.isnan().any() else (math.nan if x.numel() else 0.0) for x in d],
        dtype=f64,
    )
    nonfinite = torch.tensor([float((~torch.isfinite(x)).sum()) for x in d])
    total = float(torch.linalg.vector_norm(norm, p))
    coef = math.nan if math.isnan(total) else min(max_norm / (total + 1e-6), 1.0)
    return {"norm": norm, "maxabs": maxabs, "nonfinite": nonfinite, "total": total, "coef": coef}


@pytest.mark.parametrize("stats", ["norm", "full"])
@pytest.mark.parametrize("p", [2.0, math.inf, 1.0, 3.0, 0.5, 0.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_measure_matches_float64(dtype, p, stats):
    grads = fresh(SIZES, dtype)
    before = [g.clone() for g in grads]
    ref = ref64(grads, p, 1.0)
    out = cpu.measure(grads, 1.0, p, stats)
    tol = TOL[dtype] if p >= 1 else 1e-4  # p < 1: (Σ|x|^p)^(1/p) amplifies the fp32 sum's error
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # torch's dtype; halves reduced in fp32
    for t in (out.norm, out.total, out.coef):
        assert t.dtype == acc
    assert out.nonfinite.dtype == out.found_inf.dtype == torch.float32
    close(out.norm, ref["norm"], rtol=tol)
    close(out.total, ref["total"], rtol=tol)
    close(out.coef, ref["coef"], rtol=tol)
    close(out.grad_scale, 1.0 / ref["coef"], rtol=tol)
    assert out.nonfinite.tolist() == [0.0] * len(SIZES) and float(out.found_inf) == 0.0
    if stats == "full" or math.isinf(p):  # the inf-norm is max |g|: always there
        close(out.maxabs, ref["maxabs"], rtol=0)  # max is exact in any dtype
    else:
        assert out.maxabs is None
    assert all(torch.equal(g, b) for g, b in zip(grads, before, strict=True))  # read-only


@pytest.mark.parametrize("stats", ["norm", "full"])
def test_nonfinite_counts_exact_and_maxabs_nan_semantics(stats):
    grads = fresh([(10, 10), (50,), (30,), (5,)], torch.float32, seed=1)
    grads[0][1, 2] = math.nan
    grads[0][3, 4] = math.inf
    grads[0][5, 6] = math.nan
    grads[2][7] = -math.inf
    grads[2][8] = math.inf
    ref = ref64(grads, 2.0, 1.0)
    out = cpu.measure(grads, 1.0, 2.0, stats)
    assert out.nonfinite.tolist() == [3.0, 0.0, 2.0, 0.0] == ref["nonfinite"].tolist()
    assert math.isnan(float(out.total)) and math.isnan(float(out.coef)) and float(out.found_inf) == 1.0
    close(out.norm[[1, 3]], ref["norm"][[1, 3]])
    assert math.isnan(float(out.norm[0])) and math.isinf(float(out.norm[2]))
    if stats == "full":
        close(out.maxabs, ref["maxabs"], rtol=0)  # [NaN, finite, inf, finite]
        assert math.isnan(float(out.maxabs[0])) and math.isinf(float(out.maxabs[2]))


def test_overflowed_norm_counts_zero_nonfinite():
    grads = [torch.tensor([3e19, 1.0]), torch.tensor([2.0, 0.5])]  # Σx² overflows fp32, elements finite
    out = cpu.measure(grads, 1.0, 2.0, "full")
    assert math.isinf(float(out.norm[0])) and float(out.found_inf) == 1.0
    assert out.nonfinite.tolist() == [0.0, 0.0]
    close(out.maxabs, torch.tensor([3e19, 2.0]), rtol=0)


def test_mixed_dtypes_keep_parameter_order():
    grads = (
        fresh([40], torch.bfloat16, 2) + fresh([30, 20], torch.float32, 3) + fresh([9], torch.float16, 4)
    )
    ref = ref64(grads, 2.0, 0.1)
    out = cpu.measure(grads, 0.1, 2.0, "full")
    close(out.norm, ref["norm"], rtol=2e-5)
    close(out.total, ref["total"], rtol=2e-5)
    close(out.maxabs, ref["maxabs"], rtol=0)


def test_negative_control_detects_a_perturbed_reference():
    grads = fresh(SIZES, torch.float32, 5)
    out = cpu.measure(grads, 1.0, 2.0, "full")
    ref = ref64(grads, 2.0, 1.0)
    bad = ref["norm"].clone()
    bad[2] *= 1 + 1e-4
    with pytest.raises(AssertionError):
        close(out.norm, bad, rtol=2e-5)
    bad_max = ref["maxabs"].clone()
    bad_max[0] *= 1 + 1e-6
    with pytest.raises(AssertionError):
        close(out.maxabs, bad_max, rtol=0)


def test_generic_norm_path_flags_nonfinite():
    """The stats="norm" path used off the CPU (run here on CPU tensors): no branch on a value."""
    grads = fresh([(6, 5), (40,), (3,)], torch.float32, 6)
    grads[1][0] = math.nan
    ref = ref64(grads, 2.0, 1.0)
    out = B._generic_norm(grads, 1.0, 2.0)
    close(out.norm[[0, 2]], ref["norm"][[0, 2]], rtol=2e-5)
    assert out.maxabs is None and out.nonfinite.tolist() == [0.0, 1.0, 0.0]  # a flag, not a count
    assert math.isnan(float(out.total)) and float(out.found_inf) == 1.0
    inf_out = B._generic_norm(fresh([(6, 5), (3,)], torch.float32, 7), 1.0, math.inf)
    assert torch.equal(inf_out.maxabs, inf_out.norm)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_grad_norm_stats_option(max_norm):
    seen = []
    handle = C.add_listener(lambda params, result: seen.append(result))
    try:
        a, b = mlp(0), mlp(0)
        ref = ref64([p.grad for p in a.parameters()], 2.0, max_norm)
        before = [p.grad.double().clone() for p in a.parameters()]
        close(C.clip_grad_norm_(a.parameters(), max_norm, stats="norm"), ref["total"], rtol=2e-6)
        close(C.clip_grad_norm_(b.parameters(), max_norm, stats="full"), ref["total"], rtol=2e-6)
    finally:
        handle.remove()
    norm_only, full = seen
    assert norm_only.per_tensor.maxabs is None
    close(full.per_tensor.maxabs, ref["maxabs"], rtol=0)
    for res in seen:
        close(res.per_tensor.norm, ref["norm"], rtol=2e-6)
        assert res.per_tensor.nonfinite.tolist() == [0.0] * 4
        assert bool(res.clipped) == (ref["coef"] < 1)
    for pa, pb, g in zip(a.parameters(), b.parameters(), before, strict=True):
        close(pa.grad, g * ref["coef"], rtol=2e-6)
        assert torch.equal(pa.grad, pb.grad)


@pytest.mark.parametrize("name", ["norm", "none", "layer", "autoclip", "zclip"])
def test_clippers_take_stats(name):
    r = C.make_clipper(name, stats="full")(mlp(1).parameters())
    close(r.per_tensor.maxabs, ref64([p.grad for p in mlp(1).parameters()], 2.0, 1.0)["maxabs"], rtol=0)
    assert C.make_clipper(name)(mlp(1).parameters()).per_tensor.maxabs is None
    with pytest.raises(ValueError, match="stats must be one of"):
        C.make_clipper(name, stats="max")


def test_stats_checked_in_functions():
    with pytest.raises(ValueError, match="stats must be one of"):
        C.clip_grad_norm_(mlp(0).parameters(), 1.0, stats="all")
    opt = torch.optim.AdamW(mlp(0).parameters(), fused=True)
    with pytest.raises(ValueError, match="stats must be one of"):
        C.fold_step(opt, [], 1.0, stats="")


def test_auto_stats_measure_maxabs_only_while_a_listener_listens():
    m = mlp(2)
    ref = ref64([p.grad for p in m.parameters()], 2.0, 1e6)
    assert C.NormClipper(1e6)(m.parameters()).per_tensor.maxabs is None  # nobody listens: "norm"
    seen = []
    handle = C.add_listener(lambda params, result: seen.append(result))
    try:
        r = C.NormClipper(1e6)(m.parameters())
        C.clip_grad_norm_(m.parameters(), 1e6)
        C.NormClipper(1e6, stats="norm")(m.parameters())  # an explicit choice wins
    finally:
        handle.remove()
    close(r.per_tensor.maxabs, ref["maxabs"], rtol=0)
    close(seen[1].per_tensor.maxabs, ref["maxabs"], rtol=0)
    assert seen[2].per_tensor.maxabs is None
    assert C.NormClipper(1e6)(m.parameters()).per_tensor.maxabs is None  # removed: "norm" again
