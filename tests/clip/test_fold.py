"""Folding the clip coefficient into torch's fused AdamW (grad_scale = 1/coef, found_inf)."""

from __future__ import annotations

import pytest
import torch
from clip_helpers import close, mlp

import gradscope.clip as C


@pytest.mark.parametrize("max_norm", [0.1, 1e6])
def test_fold_equals_clip_then_step(max_norm):
    a, b = mlp(4), mlp(4)
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(3):
        if step:
            for m in (a, b):
                for p in m.parameters():
                    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) * 3
        r = C.fold_step(oa, a.parameters(), max_norm)
        torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
        ob.step()
        assert bool(r.clipped) == (max_norm < 1)
        assert not hasattr(oa, "grad_scale")
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            close(pa.detach(), pb.detach(), rtol=1e-5, atol=1e-7)


def test_fold_skips_step_on_nonfinite():
    a = mlp(5)
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    a[0].weight.grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in a.parameters()]
    C.fold_step(opt, a.parameters(), 1.0)
    assert all(torch.equal(p.detach(), w) for p, w in zip(a.parameters(), before, strict=True))


def test_fold_needs_fused_optimizer():
    a = mlp(6)
    with pytest.raises(ValueError, match="fused=True"):
        C.fold_step(torch.optim.AdamW(a.parameters()), a.parameters(), 1.0)
    with pytest.raises(ValueError, match="fused=True"):
        C.fold_step(torch.optim.SGD(a.parameters(), lr=0.1), a.parameters(), 1.0)
