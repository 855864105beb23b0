"""Each clipping strategy against an independent float64 implementation of its paper's rule (AGC, ZClip and
AutoClip against their authors' code: test_references.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from clip_helpers import close, mlp, set_grads

import gradscope.clip as C

SCALES = [1.0, 1.2, 0.8, 1.1, 0.9, 1.0, 8.0, 1.0, 0.7, 1.3, 30.0, 1.0, 0.9, 1.1, 1.0, 5.0, 1.0, 0.8, 1.2, 1.0]


def grads64(m):
    return [p.grad.double().clone() for p in m.parameters()]


def total64(gs):
    return math.sqrt(sum(float((g * g).sum()) for g in gs))


def test_value_clipping_with_nan_clamps_the_rest_like_torch():
    m, t = mlp(1), mlp(1)
    for model in (m, t):
        model[0].weight.grad[0, 0] = float("nan")
    c = 0.25 * max(float(p.grad.nan_to_num().abs().max()) for p in m.parameters())
    C.ValueClipper(c)(m.parameters())
    torch.nn.utils.clip_grad_value_(t.parameters(), c)
    for p, q in zip(m.parameters(), t.parameters(), strict=True):
        assert torch.equal(p.grad.nan_to_num(7.0), q.grad.nan_to_num(7.0))  # clamped, the NaN kept
    assert float(m[0].weight.grad.nan_to_num().abs().max()) <= c


def test_value_clipping():
    m = mlp(1)
    gs = grads64(m)
    c = 0.5 * max(float(g.abs().max()) for g in gs)
    r = C.make_clipper("value", clip_value=c)(m.parameters())
    for p, g in zip(m.parameters(), gs, strict=True):
        close(p.grad, g.clamp(-c, c))
    close(r.total_norm, total64(gs))
    close(r.per_tensor.maxabs, torch.tensor([float(g.abs().max()) for g in gs]))
    assert bool(r.clipped)


def test_layer_clipping():
    m = mlp(2)
    gs = grads64(m)
    mx = 0.5 * float(np.median([float(g.norm()) for g in gs]))
    r = C.make_clipper("layer", max_norm=mx)(m.parameters())
    coefs = [min(1.0, mx / (float(g.norm()) + 1e-6)) for g in gs]
    for p, g, k in zip(m.parameters(), gs, coefs, strict=True):
        close(p.grad, g * k)
    close(r.coef, torch.tensor(coefs))
    assert bool(r.clipped) and min(coefs) < 1.0 < max(coefs) + 1e-9


def autoclip64(norms: list[float], pct: float, history: int) -> list[float]:
    coefs, hist = [], []
    for n in norms:
        hist.append(n)
        thr = float(np.percentile(hist[-history:], pct))
        coefs.append(min(1.0, thr / (n + 1e-6)))
    return coefs


def drive(clipper, steps, m=None, seed0=0):
    m = m or mlp(0)
    coefs, norms = [], []
    for i in steps:
        set_grads(m.parameters(), seed=100 + i, scale=SCALES[i])
        before = grads64(m)
        r = clipper(m.parameters())
        norms.append(total64(before))
        coefs.append(r.coef)
        k = float(r.coef)
        for p, g in zip(m.parameters(), before, strict=True):
            close(p.grad, g * k, rtol=2e-6)
    return torch.stack(coefs), norms


def test_autoclip_percentile_of_bounded_history():
    coefs, norms = drive(C.make_clipper("autoclip", percentile=25, history=6), range(20))
    close(coefs, torch.tensor(autoclip64(norms, 25, 6)), rtol=2e-6)
    assert (coefs < 1).sum() >= 3


@pytest.mark.parametrize(
    "name,kw", [("autoclip", {"percentile": 30, "history": 7}), ("zclip", {"warmup": 4})]
)
def test_state_dict_resume_is_identical(name, kw):
    a, _ = drive(C.make_clipper(name, **kw), range(20))
    b1 = C.make_clipper(name, **kw)
    first, _ = drive(b1, range(10))
    state = b1.state_dict()
    b2 = C.make_clipper(name, **kw)
    b2.load_state_dict(state)
    second, _ = drive(b2, range(10, 20))
    assert torch.equal(a, torch.cat([first, second]))


def test_nonfinite_norm_kept_out_of_adaptive_state():
    z = C.make_clipper("zclip", warmup=3)
    drive(z, range(5))
    mean = z.state_dict()["mean"].clone()
    m = mlp(0)
    m[0].weight.grad[0, 0] = float("inf")
    r = z(m.parameters())
    assert float(r.coef) == 0.0  # inf norm: clipped to zero like torch's coefficient
    assert torch.equal(z.state_dict()["mean"], mean)
    a = C.make_clipper("autoclip", history=4)
    drive(a, range(3))
    a(m.parameters())
    assert torch.isnan(a.state_dict()["buf"][0, 3])


def test_factory_and_results():
    for name in C.CLIPPERS:
        r = C.make_clipper(name)(mlp(0).parameters())
        for t in (r.total_norm, r.coef, r.clipped, r.per_tensor.norm):
            assert isinstance(t, torch.Tensor)
        assert r.clipped.dtype == torch.bool
        assert C.make_clipper(name).state_dict() is not None
    r = C.make_clipper("none")([torch.nn.Parameter(torch.ones(2))])
    assert float(r.total_norm) == 0.0 and not bool(r.clipped)
    with pytest.raises(ValueError, match="unknown clipper"):
        C.make_clipper("nope")
