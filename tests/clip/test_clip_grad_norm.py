"""clip_grad_norm_ (torch backend) against torch.nn.utils.clip_grad_norm_ and float64."""

from __future__ import annotations

import math

import pytest
import torch
from clip_helpers import close, mlp
from gradscope.kernels.reference import CPU_CHUNK

import gradscope.clip as C


def pair(dtype=torch.float32):
    return mlp(0, dtype), mlp(0, dtype)


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_equals_torch(norm_type, max_norm):
    a, b = pair()
    ours = C.clip_grad_norm_(a.parameters(), max_norm, norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm, norm_type)
    close(ours, theirs)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        close(pa.grad, pb.grad)


def test_single_tensor_generator_and_no_grad_params():
    a, b = pair()
    a[0].bias.grad = None
    b[0].bias.grad = None
    close(C.clip_grad_norm_(a[0].weight, 0.1), torch.nn.utils.clip_grad_norm_(b[0].weight, 0.1))
    close(
        C.clip_grad_norm_(iter(list(a.parameters())), 0.1),
        torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1),
    )
    with pytest.warns(UserWarning, match="empty generator"):
        assert float(C.clip_grad_norm_((p for p in []), 1.0)) == 0.0


def test_empty_list_returns_zero_like_torch():
    out = C.clip_grad_norm_([], 1.0)
    assert out.dtype == torch.float32 and float(out) == 0.0
    assert float(C.clip_grad_norm_([torch.nn.Parameter(torch.ones(3))], 1.0)) == 0.0  # no grad


def test_large_tensor_crosses_cpu_chunks():
    p = torch.nn.Parameter(torch.zeros(2 * CPU_CHUNK + 17))
    p.grad = torch.randn(p.shape)
    expected = torch.linalg.vector_norm(p.grad.double())
    before = p.grad.double().clone()
    out = C.clip_grad_norm_([p], 1.0)
    close(out, expected)
    close(p.grad, before * (1.0 / (float(expected) + 1e-6)), rtol=2e-6)


def test_mixed_dtypes_and_fp32_norm_for_bf16():
    params = [torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(30, dtype=torch.bfloat16))]
    params[0].grad = torch.randn(50)
    params[1].grad = torch.randn(30).bfloat16()
    exact = torch.linalg.vector_norm(torch.cat([p.grad.double() for p in params]))
    out = C.clip_grad_norm_(params, 1e9)
    assert out.dtype == torch.float32
    close(out, exact)
    bf = [torch.nn.Parameter(torch.zeros(40, dtype=torch.bfloat16))]
    bf[0].grad = torch.randn(40).bfloat16()
    ours = C.clip_grad_norm_(bf, 1e9)
    theirs = torch.nn.utils.clip_grad_norm_(bf, 1e9)
    assert ours.dtype == torch.float32 and theirs.dtype == torch.bfloat16  # the documented difference
    close(ours, torch.linalg.vector_norm(bf[0].grad.double()))
    close(ours, theirs.float(), rtol=8e-3)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_like_torch(bad):
    a, b = pair()
    a[0].weight.grad[1, 2] = bad
    b[0].weight.grad[1, 2] = bad
    close(C.clip_grad_norm_(a.parameters(), 1.0), torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        close(pa.grad, pb.grad)
    with pytest.raises(RuntimeError, match="non-finite"):
        C.clip_grad_norm_(a.parameters(), 1.0, error_if_nonfinite=True)


def test_negative_control():
    a, b = pair()
    ours = C.clip_grad_norm_(a.parameters(), 0.1)
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
    with pytest.raises(AssertionError):
        close(ours, theirs * (1 + 1e-4))


def test_parameters_untouched_and_no_write_without_clip():
    a = mlp(0)
    w = [p.detach().clone() for p in a.parameters()]
    g = [p.grad.clone() for p in a.parameters()]
    C.clip_grad_norm_(a.parameters(), 1e9)
    assert all(torch.equal(p.grad, x) for p, x in zip(a.parameters(), g, strict=True))
    C.clip_grad_norm_(a.parameters(), 1e-3)
    assert all(torch.equal(p.detach(), x) for p, x in zip(a.parameters(), w, strict=True))


def test_listener_gets_results_and_is_removable():
    seen = []
    handle = C.add_listener(lambda params, result: seen.append((len(params), result)))
    try:
        a = mlp(0)
        norm = C.clip_grad_norm_(a.parameters(), 0.1)
        C.NormClipper(0.1)(a.parameters())
    finally:
        handle.remove()
    C.clip_grad_norm_(a.parameters(), 0.1)
    assert len(seen) == 2 and seen[0][0] == 4
    res = seen[0][1]
    assert torch.equal(res.total_norm, norm) and bool(res.clipped)
    close(
        res.per_tensor.norm,
        torch.stack([torch.linalg.vector_norm(p.grad.double()) for p in mlp(0).parameters()]),
    )
    assert res.per_tensor.nonfinite.tolist() == [0.0] * 4
    handle.remove()  # idempotent


def test_backend_argument_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        C.clip_grad_norm_(mlp(0).parameters(), 1.0, backend="cuda")
