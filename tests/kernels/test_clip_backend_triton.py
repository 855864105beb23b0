"""gradscope.clip with backend='triton' (compiled on CUDA, else the interpreter on CPU) against torch and the
torch backend."""

from __future__ import annotations

import pytest
import torch
from f64_refs import DEV, assert_close

import gradscope.clip as C
from gradscope.clip.backend import resolve

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]


def model_with_grads(dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(DEV, dtype)
    m(torch.randn(4, 8, dtype=dtype, device=DEV)).pow(2).sum().backward()
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clip_grad_norm_triton_equals_torch(dtype):
    a, b = model_with_grads(dtype), model_with_grads(dtype)
    w_before = [p.detach().clone() for p in a.parameters()]
    ours = C.clip_grad_norm_(a.parameters(), 0.3, backend="triton")
    theirs = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.3)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    assert ours.dtype == torch.float32
    assert_close(ours, theirs.float(), tol)
    for pa, pb, w in zip(a.parameters(), b.parameters(), w_before, strict=True):
        assert_close(pa.grad, pb.grad, 2 * tol, atol=1e-6)
        assert torch.equal(pa.detach(), w)


def test_error_if_nonfinite_triton():
    m = model_with_grads()
    m[0].weight.grad[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        C.clip_grad_norm_(m.parameters(), 1.0, error_if_nonfinite=True, backend="triton")


@pytest.mark.parametrize("name", ["norm", "layer", "value", "autoclip", "zclip", "none"])
def test_clippers_triton_equal_torch_backend(name):
    kw = {"warmup": 2} if name == "zclip" else {}
    if name != "value":
        kw["stats"] = "full"  # the default "norm" leaves max |g| out on the torch backend
    a, b = model_with_grads(), model_with_grads()
    ca, cb = C.make_clipper(name, backend="triton", **kw), C.make_clipper(name, backend="torch", **kw)
    for step in range(4):
        for p in list(a.parameters()) + list(b.parameters()):
            p.grad.mul_(5.0 if step == 3 else 1.0)
        ra, rb = ca(a.parameters()), cb(b.parameters())
        assert_close(ra.total_norm, rb.total_norm, 1e-5)
        assert_close(ra.coef, rb.coef, 1e-5)
        assert_close(ra.per_tensor.maxabs, rb.per_tensor.maxabs, 1e-6)
        assert_close(ra.per_tensor.nonfinite, rb.per_tensor.nonfinite, 0)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert_close(pa.grad, pb.grad, 1e-5, atol=1e-7)


def test_fold_step_triton_equals_clip_then_step():
    a, b = model_with_grads(), model_with_grads()
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    r = C.fold_step(oa, a.parameters(), 0.2, backend="triton")
    torch.nn.utils.clip_grad_norm_(b.parameters(), 0.2)
    ob.step()
    assert bool(r.clipped)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert_close(pa.detach(), pb.detach(), 1e-5, atol=1e-7)


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve("triton", [torch.randn(3)])
    assert resolve("auto", [torch.randn(3)]) == "torch"  # auto never picks triton for CPU grads
