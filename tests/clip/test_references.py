"""AGC, ZClip and AutoClip against their authors' code: timm and the NFNets authors' AGC (vendored in
refs/, they cannot be installed here), and the ``zclip`` and ``autoclip`` packages themselves (installed
without their torch requirement by ``make install-dev``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from clip_helpers import close
from refs import nfnets_agc, timm_agc

import gradscope.clip as C

try:  # the reference packages: `make install-dev` installs them (pip install --no-deps zclip autoclip)
    import autoclip.torch as autoclip_torch
    import zclip
except ImportError as exc:  # pragma: no cover - a clear error instead of a silent skip
    raise ImportError(f"{exc}: run `make install-dev` (pip install --no-deps zclip==1.0.0 autoclip==0.2.1)") from exc

SPIKES = {7: 9.0, 11: 40.0, 12: 0.5, 15: 6.0, 18: 25.0}  # step -> gradient scale (others ~1)


def conv_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(64, 6), torch.nn.Linear(6, 1),  # the last weight is [1, 6]; its bias is a scalar
    )  # fmt: skip


def with_grads(m: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scale * (1 + torch.rand((), generator=g))
    return m


# --------------------------------------------------------------------------------------------------- AGC
@pytest.mark.parametrize("clip", [0.01, 0.05, 0.5])
def test_agc_bitwise_equal_to_timm(clip):
    """fp32: timm's adaptive_clip_grad and gradscope's AGC give the same bits (no [out, 1] weights here)."""
    a, b = with_grads(conv_net(), seed=1, scale=30.0), with_grads(conv_net(), seed=1, scale=30.0)
    a[0].bias.data[0] = b[0].bias.data[0] = 0.0  # a zero weight unit: the eps floor applies
    timm_agc.adaptive_clip_grad(a.parameters(), clip_factor=clip)
    result = C.AGC(clip_factor=clip)(b.parameters())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad)
    unclipped = with_grads(conv_net(), seed=1, scale=30.0).parameters()
    changed = [not torch.equal(p.grad, q.grad) for p, q in zip(b.parameters(), unclipped, strict=True)]
    assert bool(result.clipped) == any(changed) and (clip == 0.5 or all(changed[:2]))


def test_agc_negative_control_per_element_vectors_differ_from_timm():
    """The old rule (a vector clipped element by element) does not match timm: the test can fail."""
    a = with_grads(conv_net(), seed=2, scale=30.0)
    bias = a[0].bias
    w, g = bias.detach().clone(), bias.grad.clone()
    timm_agc.adaptive_clip_grad([bias], clip_factor=0.01)
    per_element = torch.where(g.abs() > 0.01 * w.abs().clamp(min=1e-3), g * 0.01 * w.abs().clamp(min=1e-3) / g.abs(), g)
    assert not torch.allclose(per_element, bias.grad)


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 3, 3), (5,), (), (1, 7), (7, 1), (4, 1, 1, 1)])
def test_agc_equals_the_nfnets_authors_rule(shape):
    """Their unitwise_norm squeezes first: a [out, 1] weight is one unit (timm takes its rows)."""
    gen = torch.Generator().manual_seed(len(shape))
    p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
    p.grad = torch.randn(shape, generator=gen, dtype=torch.float64) * 3.0
    expected = nfnets_agc.agc_torch_layout(0.05, 1e-3, p.grad.numpy(), p.detach().numpy())
    C.AGC(0.05)([p])
    np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=0)


# -------------------------------------------------------------------------------------------------- ZClip
ZCLIP_CASES = [
    {},  # the package's defaults: zscore + adaptive_scaling (the paper's rule), max_grad_norm=1.0
    {"max_grad_norm": None},
    {"max_grad_norm": None, "clip_factor": 0.7},
    {"max_grad_norm": None, "clip_option": "mean"},
    {"max_grad_norm": None, "mode": "percentile"},
    {"max_grad_norm": 20.0, "skip_update_on_spike": True},
    {"max_grad_norm": None, "mode": "percentile", "skip_update_on_spike": True, "z_thresh": 1.5},
]


@pytest.mark.parametrize("kw", ZCLIP_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_zclip_matches_the_zclip_package(kw):
    kw = {"warmup_steps": 5, "alpha": 0.9, **kw}
    theirs, ours = zclip.ZClip(**kw), C.ZClip(**kw)
    a = conv_net()
    b = copy.deepcopy(a)
    clipped = 0
    for step in range(20):
        scale = 0.01 * SPIKES.get(step, 1.0)  # norms ~0.3, spikes up to ~14: below and above max_grad_norm=1
        with_grads(a, seed=step, scale=scale)
        with_grads(b, seed=step, scale=scale)
        before = [p.grad.clone() for p in b.parameters()]
        n_theirs = theirs.step(a)
        result = ours(b.parameters())
        close(result.total_norm, n_theirs, rtol=1e-5)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            close(pb.grad, pa.grad, rtol=2e-5, atol=1e-7)
        clipped += any(not torch.equal(pb.grad, x) for pb, x in zip(b.parameters(), before, strict=True))
        if theirs.initialized:
            close(ours._mean, theirs.mean, rtol=1e-5)
            close(ours._var, theirs.var, rtol=1e-4)
    assert clipped >= 2  # the spikes really clip: the comparison is not between two no-ops


def test_zclip_negative_control_modes_differ():
    """The package's percentile mode is not its default: comparing ours (default) with it must fail."""
    theirs, ours = zclip.ZClip(warmup_steps=5, alpha=0.9, mode="percentile"), C.ZClip(warmup_steps=5, alpha=0.9)
    a, b = conv_net(), conv_net()
    worst = 0.0
    for step in range(20):
        scale = 0.01 * SPIKES.get(step, 1.0)
        theirs.step(with_grads(a, seed=step, scale=scale))
        ours(with_grads(b, seed=step, scale=scale).parameters())
        worst = max(worst, max(float(((pa.grad - pb.grad).abs() / pa.grad.abs().max()).max())
                               for pa, pb in zip(a.parameters(), b.parameters(), strict=True)))  # fmt: skip
    assert worst > 1e-2


def test_zclip_warmup_alias_and_bad_mode():
    assert C.ZClip(warmup=7).warmup_steps == 7
    with pytest.raises(ValueError, match="mode must be one of"):
        C.ZClip(mode="zcore")
    with pytest.raises(ValueError, match="clip_option must be one of"):
        C.ZClip(clip_option="median")


# ----------------------------------------------------------------------------------------------- AutoClip
@pytest.mark.parametrize("global_threshold", [False, True])
@pytest.mark.parametrize("quantile,history_length", [(0.9, 1000), (0.3, 4)])
def test_autoclip_matches_the_autoclip_package(global_threshold, quantile, history_length):
    a = conv_net()
    b = copy.deepcopy(a)
    theirs = autoclip_torch.QuantileClip(a.parameters(), quantile=quantile, history_length=history_length,
                                         global_threshold=global_threshold)  # fmt: skip
    ours = C.AutoClip(quantile=quantile, history_length=history_length, global_threshold=global_threshold,
                      include_current=False)  # fmt: skip
    clipped = 0
    for step in range(16):
        scale = SPIKES.get(step, 1.0)
        with_grads(a, seed=step, scale=scale)
        with_grads(b, seed=step, scale=scale)
        theirs.step()
        result = ours(b.parameters())
        clipped += int(bool(result.clipped))
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7)
    assert clipped >= 3


def test_autoclip_per_parameter_default_of_the_package_is_available_by_name():
    m = with_grads(conv_net(), seed=0)
    clipper = C.make_clipper("autoclip", quantile=0.5, global_threshold=False, include_current=False)
    first = clipper(m.parameters())
    assert first.coef.shape == (len(list(m.parameters())),) and not bool(first.clipped)  # no history yet
