"""AMP (GradScaler), gradient accumulation, checkpointing, multiple optimizers, gradscope clipping."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradscope
from gradscope.clip import clip_grad_norm_ as gs_clip


def make(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))


def data(steps: int, n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 8, generator=g), torch.randn(n, 2, generator=g)) for _ in range(steps)]


def test_amp_grad_scaler_records_unscaled_stats_and_skips(tmp_path):
    batches = data(6)
    ref_model, amp_model = make(), make()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05)
    amp_opt = torch.optim.SGD(amp_model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    with gradscope.watch(ref_model, ref_opt, log_dir=tmp_path / "ref"), \
         gradscope.watch(amp_model, amp_opt, log_dir=tmp_path / "amp", scaler=scaler):
        for i, (x, y) in enumerate(batches):
            loss = ((ref_model(x) - y) ** 2).mean()
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad()
            if i == 3:
                x = x.clone()
                x[0, 0] = float("inf")  # overflow: the scaler skips this step
            loss = ((amp_model(x) - y) ** 2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(amp_opt)
            torch.nn.utils.clip_grad_norm_(amp_model.parameters(), 1e9)
            scaler.step(amp_opt)
            scaler.update()
            amp_opt.zero_grad()
            if i == 3:  # keep the reference in lock-step: it skips nothing, so rewind its weights
                ref_model.load_state_dict(amp_model.state_dict())
    ref, run = gradscope.load_run(tmp_path / "ref"), gradscope.load_run(tmp_path / "amp")
    assert run.num_steps == 6
    ok = [0, 1, 2]  # identical training up to the skipped step
    np.testing.assert_allclose(run.metric("param", "grad_norm")[ok], ref.metric("param", "grad_norm")[ok],
                               rtol=1e-5)
    np.testing.assert_allclose(run.scalars["grad_norm"][ok], ref.scalars["grad_norm"][ok], rtol=1e-5)
    assert run.scalars["amp_skipped"].tolist() == [0, 0, 0, 1, 0, 0]
    assert run.scalars["amp_scale"][0] == 2.0**12 and run.scalars["amp_scale"][4] == 2.0**11
    assert not np.isfinite(run.scalars["grad_norm"][3])
    assert [e["step"] for e in run.events if e["kind"] == "amp_skip"] == [3]


def test_accumulation_k_micro_batches_equal_one_big_batch(tmp_path):
    (x, y), = data(1, n=32)
    big, acc = make(), make()
    opt_big = torch.optim.SGD(big.parameters(), lr=0.1)
    opt_acc = torch.optim.SGD(acc.parameters(), lr=0.1)
    with gradscope.watch(big, opt_big, log_dir=tmp_path / "big"):
        ((big(x) - y) ** 2).mean().backward()
        opt_big.step()
    with gradscope.watch(acc, opt_acc, log_dir=tmp_path / "acc"):
        for xs, ys in zip(x.chunk(4), y.chunk(4), strict=False):
            (((acc(xs) - ys) ** 2).mean() / 4).backward()
        opt_acc.step()
    a, b = gradscope.load_run(tmp_path / "big"), gradscope.load_run(tmp_path / "acc")
    assert a.num_steps == b.num_steps == 1
    for kind, name in [("param", "grad_norm"), ("param", "grad_max"), ("act", "mean"), ("act", "std"),
                       ("act", "zero_frac"), ("act", "sat_frac")]:
        np.testing.assert_allclose(b.metric(kind, name), a.metric(kind, name), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{kind}/{name}")
    np.testing.assert_allclose(b.scalars["grad_norm"], a.scalars["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_each_activation_once(tmp_path, reentrant):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
            self.out = nn.Linear(16, 2)

        def forward(self, x, ckpt):
            h = self.inp(x)
            if ckpt:
                h = checkpoint(self.block, h, use_reentrant=reentrant)
            else:
                h = self.block(h)
            return self.out(h)

    torch.manual_seed(0)
    plain = Net()
    ck = copy.deepcopy(plain)
    (x, y), = data(1)
    x.requires_grad_(reentrant)  # reentrant checkpointing needs an input that requires grad
    runs = {}
    for name, model, flag in (("plain", plain, False), ("ckpt", ck, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, log_dir=tmp_path / name):
            for _ in range(2):
                ((model(x, flag) - y) ** 2).mean().backward()
                opt.step()
                opt.zero_grad()
        runs[name] = gradscope.load_run(tmp_path / name)
    a, b = runs["plain"], runs["ckpt"]
    assert [r.name for r in b.rows_of("act")] == [r.name for r in a.rows_of("act")]
    assert [r.depth for r in b.rows_of("act")] == [r.depth for r in a.rows_of("act")]
    for kind, name in [("act", "mean"), ("act", "std"), ("flow", "norm"), ("param", "grad_norm")]:
        np.testing.assert_allclose(b.metric(kind, name), a.metric(kind, name), rtol=1e-5, err_msg=name)


def test_two_optimizers_one_step_each(tmp_path):
    model = make()
    body = torch.optim.SGD(list(model[0].parameters()) + list(model[2].parameters()), lr=0.1)
    head = torch.optim.Adam(model[4].parameters(), lr=1e-2)
    with gradscope.watch(model, [body, head], log_dir=tmp_path / "r", update_every=1):
        for x, y in data(3):
            ((model(x) - y) ** 2).mean().backward()
            body.step()
            head.step()
            body.zero_grad()
            head.zero_grad()
    run = gradscope.load_run(tmp_path / "r")
    assert run.num_steps == 3
    upd = run.metric("param", "update_ratio")
    assert np.isfinite(upd).all() and (upd > 0).all()  # both optimizers' updates are seen


def test_gradscope_clip_feeds_the_scope(tmp_path):
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    returned, per_param = [], []
    with gradscope.watch(model, opt, log_dir=tmp_path / "r"):
        for x, y in data(4):
            ((model(x) - y) ** 2).mean().backward()
            per_param.append([p.grad.double().norm().item() for p in model.parameters()])
            returned.append(gs_clip(model.parameters(), 0.05, backend="torch"))
            opt.step()
            opt.zero_grad()
    run = gradscope.load_run(tmp_path / "r")
    np.testing.assert_allclose(run.scalars["grad_norm"], torch.stack(returned).numpy(), rtol=1e-6)
    np.testing.assert_allclose(run.metric("param", "grad_norm"), per_param, rtol=1e-5)
    coef = run.scalars["clip_coef"]
    np.testing.assert_allclose(coef, np.minimum(1.0, 0.05 / (run.scalars["grad_norm"] + 1e-6)), rtol=1e-5)
    assert run.scalars["clipped"].tolist() == [1.0] * 4


def test_scope_reuses_a_clip_pass_that_measured_everything(tmp_path):
    """When a clip hands over norms, max |g| and non-finite counts, the Scope stops reading grads."""
    from gradscope.clip._listeners import notify
    from gradscope.clip.result import ClipResult, TensorStats
    from gradscope.functional import grad_stats

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    fake_max = []
    with gradscope.watch(model, opt, log_dir=tmp_path / "r") as scope:
        calls = []
        measure = scope._param_side.measure
        scope._param_side.measure = lambda **kw: calls.append(1) or measure(**kw)
        for x, y in data(3):
            ((model(x) - y) ** 2).mean().backward()
            norm, maxabs, nonfinite = grad_stats([p.grad for p in params])
            fake_max.append((maxabs * 3).tolist())  # a value only the clip result carries
            total = torch.linalg.vector_norm(norm)
            notify(params, ClipResult(total, torch.tensor(0.5), torch.tensor(True),
                                      TensorStats(norm, maxabs * 3, nonfinite)))
            opt.step()
            opt.zero_grad()
    run = gradscope.load_run(tmp_path / "r")
    assert len(calls) == 1, "after the first clip the Scope must not measure gradients itself"
    np.testing.assert_allclose(run.metric("param", "grad_max"), fake_max, rtol=1e-6)
    assert run.scalars["clip_coef"].tolist() == [0.5] * 3


def test_clip_auto_stats_measure_max_only_on_recorded_steps(tmp_path):
    from gradscope.clip import _listeners

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    assert not _listeners.active()
    with gradscope.watch(model, opt, log_dir=tmp_path / "r", every=2):
        for x, y in data(4):
            ((model(x) - y) ** 2).mean().backward()
            seen.append(_listeners.active())
            gs_clip(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    assert seen == [True, False, True, False]
    assert not _listeners.active()
