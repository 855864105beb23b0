"""Scope contracts: statistics against float64 references, pre-clip, no host sync, clean detach."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradscope


def mlp(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 12), act(), nn.Linear(12, 12), nn.Sigmoid(), nn.Linear(12, 3))


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 6), torch.randn(n, 3)


def train(model, opt, scope, steps, clip=None, hook=None):
    out = []
    for _ in range(steps):
        x, y = batch()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if hook:
            hook()
        if clip is not None:
            out.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        opt.step()
        opt.zero_grad()
        scope.log(loss=loss)
    return out


def test_global_norm_is_pre_clip_and_equals_torch_clip_return(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=4) as scope:
        returned = train(model, opt, scope, 10, clip=0.05)
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == list(range(10))
    ref = torch.stack(returned).numpy()
    np.testing.assert_allclose(run.scalars["grad_norm"], ref, rtol=1e-6)
    assert (ref > 0.05).all(), "the test must clip, or it cannot tell pre- from post-clip"


def test_param_stats_match_float64_reference(run_dir):
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    names = [n for n, _ in model.named_parameters()]
    ref = {"norm": [], "max": [], "w": [], "upd": []}
    before: list[torch.Tensor] = []

    def capture():
        ps = list(model.parameters())
        ref["norm"].append([p.grad.double().norm().item() for p in ps])
        ref["max"].append([p.grad.double().abs().max().item() for p in ps])
        before[:] = [p.detach().double().clone() for p in ps]

    with gradscope.watch(model, opt, log_dir=run_dir, update_every=1) as scope:
        for _ in range(5):
            train(model, opt, scope, 1, clip=0.01, hook=capture)
            ps = list(model.parameters())
            ref["w"].append([p.detach().double().norm().item() for p in ps])
            ref["upd"].append([(p.detach().double() - b).norm().item() / p.detach().double().norm().item()
                               for p, b in zip(ps, before, strict=False)])
    run = gradscope.load_run(run_dir)
    assert [r.name for r in run.rows_of("param")] == names
    np.testing.assert_allclose(run.metric("param", "grad_norm"), ref["norm"], rtol=1e-5)
    np.testing.assert_allclose(run.metric("param", "grad_max"), ref["max"], rtol=1e-6)
    np.testing.assert_allclose(run.metric("param", "weight_norm"), ref["w"], rtol=1e-5)
    np.testing.assert_allclose(run.metric("param", "update_ratio"), ref["upd"], rtol=1e-3, atol=1e-7)
    assert (run.metric("param", "grad_nonfinite") == 0).all()


def test_activation_and_flow_stats_match_float64_reference(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs: dict[str, list[torch.Tensor]] = {}
    grads: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(mod, args, out):
            outs.setdefault(name, []).append(out.detach().double().clone())
            out.register_hook(lambda g: grads.setdefault(name, []).append(g.double().clone()))
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_children()]
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        train(model, opt, scope, 3)
    for h in handles:
        h.remove()
    run = gradscope.load_run(run_dir)
    act_names = [r.name for r in run.rows_of("act")]
    assert act_names == ["0", "1", "2", "3", "4"]
    assert [r.depth for r in run.rows_of("act")] == [0, 1, 2, 3, 4]
    for c, name in enumerate(act_names):
        ys = outs[name]
        for s in range(3):
            y = ys[s]
            assert run.metric("act", "mean")[s, c] == pytest.approx(y.mean().item(), rel=1e-5, abs=1e-7)
            assert run.metric("act", "std")[s, c] == pytest.approx(y.std(correction=0).item(), rel=1e-4)
            assert run.metric("act", "zero_frac")[s, c] == pytest.approx((y == 0).double().mean().item())
            g = grads[name][s]
            assert run.metric("flow", "norm")[s, c] == pytest.approx(g.norm().item(), rel=1e-5)
    relu_col, sig_col = act_names.index("1"), act_names.index("3")
    assert run.metric("act", "zero_frac")[:, relu_col].min() > 0.1  # ReLU zeros are seen
    assert np.isnan(run.metric("act", "sat_frac")[0, relu_col]) or run.metric("act", "sat_frac")[0, relu_col] == 0
    y = outs["3"][0]
    sat = ((y - 0.5).abs() > 0.49).double().mean().item()
    assert run.metric("act", "sat_frac")[0, sig_col] == pytest.approx(sat)
    dead = 1 - (outs["1"][0] > 0).any(0).double().mean().item()
    assert run.metric("act", "dead_frac")[0, relu_col] == pytest.approx(dead)
    assert np.isnan(run.metric("act", "dead_frac")[0, sig_col])


def test_dead_units_with_negative_bias(run_dir):
    model = mlp()
    with torch.no_grad():
        model[0].bias[:6] = -100.0  # half the ReLU units can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        train(model, opt, scope, 2)
    run = gradscope.load_run(run_dir)
    col = [r.name for r in run.rows_of("act")].index("1")
    assert run.metric("act", "dead_frac")[:, col] == pytest.approx([0.5, 0.5], abs=0.09)


def test_no_host_sync_per_step(run_dir, no_host_sync):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scope = gradscope.watch(model, opt, log_dir=run_dir, flush_every=3, update_every=1)
    mode = no_host_sync(scope)
    with mode:
        for _ in range(7):
            x, y = batch()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss, lr_scaled=0.5)
    scope.close()
    assert mode.violations == []
    assert gradscope.load_run(run_dir).num_steps == 7


def test_no_host_sync_guard_catches_a_sync(run_dir, no_host_sync):
    """Negative control: the guard does see a sync made from gradscope's code."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=run_dir)
    original = scope._param_side.record

    def syncing():
        original()
        scope._buffers.metric("param", "grad_norm").sum().item()

    scope._param_side.record = syncing
    mode = no_host_sync(scope)
    with mode:
        train(model, opt, scope, 2)
    scope.close()
    assert mode.violations, "the guard missed an .item() call in gradscope code"


def test_no_host_sync_guard_catches_python_scalar_writes(run_dir, no_host_sync):
    """Negative control: a Python number written into a device tensor (``t[i] = lr``) is a blocking
    host-to-device copy on an accelerator; the guard sees it (the buffers keep such numbers on the host)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=run_dir)
    buffers = scope._buffers

    def put_into_device_tensor(name, slot, value):
        t = buffers._scalars.setdefault(name, torch.full((buffers.capacity,), torch.nan))
        t[slot] = value

    buffers.put_scalar = put_into_device_tensor
    mode = no_host_sync(scope)
    with mode:
        train(model, opt, scope, 4)
    scope.close()
    assert any("__setitem__" in v for v in mode.violations), mode.violations


def test_torch_clip_generic_path_does_not_copy_python_data_per_step(run_dir, no_host_sync, monkeypatch):
    """The torch-backend clip off the CPU path (any other device) with a Scope listening: no tensor
    built from Python data per step (forced here on the CPU by declining the CPU path)."""
    from gradscope import clip

    monkeypatch.setattr(clip.cpu, "fits", lambda grads, p: False)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=run_dir)
    mode = no_host_sync(scope)
    with mode:
        for _ in range(5):
            x, y = batch()
            ((model(x) - y) ** 2).mean().backward()
            clip.clip_grad_norm_(model.parameters(), 0.1, backend="torch")
            opt.step()
            opt.zero_grad()
    scope.close()
    # reference.scale_ reads a CPU coefficient with .item() (no device there): the CPU stand-in's only sync
    assert [v for v in mode.violations if not v.startswith("item from") or "reference.py" not in v] == []
    assert any("reference.py" in v for v in mode.violations), "the guard did not see the clip run"
    run = gradscope.load_run(run_dir)
    assert run.num_steps == 5 and np.isfinite(run.metric("param", "grad_max")).all()


def test_scalars_logged_as_numbers_and_tensors_under_one_name(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=2) as scope:
        for i in range(5):
            x, y = batch()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            scope.log(acc=torch.tensor(i / 10) if i % 2 else i / 10)
    run = gradscope.load_run(run_dir)
    np.testing.assert_allclose(run.scalars["acc"], [0.0, 0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(run.scalars["lr"], [0.1] * 5, rtol=1e-6)


def test_no_host_sync_guard_catches_per_step_index_building(run_dir, no_host_sync):
    """Negative control: scatter indices rebuilt from Python lists every step would be a
    host-to-device copy per step on an accelerator; the guard sees them."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=run_dir)
    sums = scope._module_side.sums
    original = sums.reduce

    def uncached(rows):
        sums._plans.clear()
        return original(rows)

    sums.reduce = uncached
    mode = no_host_sync(scope)
    with mode:
        train(model, opt, scope, 4)
    scope.close()
    assert any("accumulators.py" in v for v in mode.violations), mode.violations


def test_frozen_and_missing_grads_are_recorded_as_such(run_dir):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(4, 4)
            self.used = nn.Linear(4, 2)
            self.sometimes = nn.Linear(4, 2)
            self.frozen.requires_grad_(False)

        def forward(self, x, step):
            h = self.frozen(x)
            return self.used(h) + (self.sometimes(h) if step % 2 else 0)

    model = Branchy()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir):
        for step in range(4):
            model(torch.randn(8, 4), step).pow(2).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    run = gradscope.load_run(run_dir)
    rows = {r.name: (c, r) for c, r in enumerate(run.rows_of("param"))}
    gn = run.metric("param", "grad_norm")
    assert not rows["frozen.weight"][1].trainable and rows["used.weight"][1].trainable
    assert np.isnan(gn[:, rows["frozen.weight"][0]]).all()
    frozen_w = run.metric("param", "weight_norm")[:, rows["frozen.weight"][0]]
    assert frozen_w[0] == pytest.approx(model.frozen.weight.double().norm().item(), rel=1e-6)
    assert np.isnan(frozen_w[1:]).all()  # weight norms are sampled with update_every=10
    some = gn[:, rows["sometimes.weight"][0]]
    assert np.isnan(some[[0, 2]]).all() and np.isfinite(some[[1, 3]]).all()
    assert np.isfinite(gn[:, rows["used.weight"][0]]).all()


def test_close_leaves_model_exactly_as_before(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6)
    scope = gradscope.watch(model, opt, log_dir=run_dir)
    train(model, opt, scope, 2)
    scope.close()
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    expected = model(x)
    ref_model, ref_opt = weakref.ref(model), weakref.ref(opt)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    del model, opt, expected
    gc.collect()
    assert ref_model() is None and ref_opt() is None, "the closed scope still references the model"


def test_tied_parameters_and_module_called_twice(run_dir):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.block = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            h = self.emb(idx)
            h = self.block(torch.tanh(self.block(h)))  # block runs twice
            return self.head(h)

    model = Tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = torch.randint(0, 10, (4, 5))
    with gradscope.watch(model, opt, log_dir=run_dir):
        model(idx).logsumexp(-1).mean().backward()
        grads = {n: p.grad.double().clone() for n, p in model.named_parameters()}
        outs = []
        h = model.block.register_forward_hook(lambda m, a, o: outs.append(o.detach().double()))
        with torch.no_grad():
            model(idx)  # a no_grad pass between backward and step is not recorded
        h.remove()
        opt.step()
        opt.zero_grad()
    run = gradscope.load_run(run_dir)
    names = [r.name for r in run.rows_of("param")]
    assert names == ["emb.weight", "block.weight", "block.bias"]  # tied weight once
    np.testing.assert_allclose(run.metric("param", "grad_norm")[0],
                               [grads[n].norm().item() for n in names], rtol=1e-5)
    assert run.num_steps == 1
    # activation stats of the twice-called block span both calls: check against the grad-mode pass
    col = [r.name for r in run.rows_of("act")].index("block")
    both = torch.cat([o.flatten() for o in outs])  # the no_grad pass has the same weights and input
    assert run.metric("act", "mean")[0, col] == pytest.approx(both.mean().item(), rel=1e-5)


def test_eval_and_no_grad_passes_are_not_steps(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        for _ in range(3):
            train(model, opt, scope, 1)
            model.eval()
            model(torch.randn(5, 6)).sum()  # eval pass with grad enabled
            model.train()
            with torch.no_grad():
                model(torch.randn(5, 6))
    run = gradscope.load_run(run_dir)
    assert run.num_steps == 3
    assert (run.metric("act", "mean")[:, 0] != 0).all()


def test_a_submodule_left_in_eval_mode_is_recorded_while_the_model_trains(run_dir):
    """from_pretrained returns a backbone in eval mode; wrapped in a model that trains, its outputs are
    part of every training step. Only the watched model's own mode marks an eval pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.Tanh()), nn.Linear(8, 2))
    model[0].eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        kept.append(out)

    model[0][0].register_forward_hook(keep)
    means, flows = [], []
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        for _ in range(3):
            kept.clear()
            loss = model(torch.randn(5, 6)).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            means.append(kept[0].double().mean().item())
            flows.append(kept[0].grad.double().norm().item())
            opt.step()
            scope.log(loss=loss)
            model.eval()
            model(torch.randn(5, 6)).sum()  # the model's own eval pass, grad enabled: not a step
            model.train()
            model[0].eval()
    run = gradscope.load_run(run_dir)
    col = [r.name for r in run.rows_of("act")].index("0.0")
    assert run.num_steps == 3
    np.testing.assert_allclose(run.metric("act", "mean")[:, col], means, rtol=1e-5)
    np.testing.assert_allclose(run.metric("flow", "norm")[:, col], flows, rtol=1e-5)


def test_every_and_include_exclude(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir, every=3, include=["0*", "2*"], exclude=["*.bias"],
                         flush_every=2) as scope:
        train(model, opt, scope, 10)
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == [0, 3, 6, 9]
    assert [r.name for r in run.rows_of("param")] == ["0.weight", "2.weight"]
    assert [r.name for r in run.rows_of("act")] == ["0", "2"]
    assert len(run.scalars["loss"]) == 4 and np.isfinite(run.scalars["loss"]).all()


def test_manual_steps_without_optimizer(run_dir):
    model = mlp()
    with gradscope.watch(model, log_dir=run_dir) as scope:
        for _ in range(3):
            x, y = batch()
            ((model(x) - y) ** 2).mean().backward()
            ref = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
            scope.step()
            scope.log(ref=ref)
            model.zero_grad()
    run = gradscope.load_run(run_dir)
    assert run.num_steps == 3
    np.testing.assert_allclose(run.scalars["grad_norm"], run.scalars["ref"], rtol=1e-6)


def test_exception_inside_with_keeps_recorded_steps(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        with gradscope.watch(model, opt, log_dir=run_dir, flush_every=100) as scope:
            train(model, opt, scope, 5)
            raise RuntimeError("boom")
    run = gradscope.load_run(run_dir)
    assert run.num_steps == 5
    (exc,) = [e for e in run.events if e["kind"] == "exception"]  # live findings may follow it
    assert exc["type"] == "RuntimeError"


def test_run_is_readable_while_being_written(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scope = gradscope.watch(model, opt, log_dir=run_dir, flush_every=2)
    train(model, opt, scope, 5)
    scope.flush(wait=True)
    assert gradscope.load_run(run_dir).num_steps == 5
    train(model, opt, scope, 2)
    scope.close()
    assert gradscope.load_run(run_dir).num_steps == 7


def test_bad_arguments_give_clear_errors(run_dir):
    model = mlp()
    with pytest.raises(TypeError, match="nn.Module"):
        gradscope.watch("model", log_dir=run_dir)
    with pytest.raises(TypeError, match="Optimizer"):
        gradscope.watch(model, "adam", log_dir=run_dir)
    with pytest.raises(ValueError, match="every"):
        gradscope.watch(model, log_dir=run_dir, every=0)
    with pytest.raises(TypeError, match="list of glob"):
        gradscope.watch(model, log_dir=run_dir, include="0.*")
    with gradscope.watch(model, log_dir=run_dir) as scope:
        with pytest.raises(ValueError, match="scalar"):
            scope.log(loss=torch.ones(3))
        with pytest.raises(TypeError, match="number"):
            scope.log(loss="high")
    again = gradscope.watch(model, log_dir=run_dir)  # an existing run is kept: the new one is versioned
    again.close()
    assert again.log_dir == run_dir.with_name(run_dir.name + "-2")
    replaced = gradscope.watch(model, log_dir=run_dir, overwrite=True)
    replaced.close()
    assert replaced.log_dir == run_dir


def test_step_by_hand_with_optimizer_is_an_error(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        with pytest.raises(RuntimeError, match="optimizer.step"):
            scope.step()


def test_activation_rows_carry_the_output_shape(run_dir):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir) as scope:
        train(model, opt, scope, 1)
    run = gradscope.load_run(run_dir)
    assert [r.shape for r in run.rows_of("act")] == [[16, 12], [16, 12], [16, 12], [16, 12], [16, 3]]
    assert [r.shape for r in run.rows_of("flow")] == [r.shape for r in run.rows_of("act")]


def _hooked(model: nn.Module) -> int:
    mods = sum(len(m._forward_hooks) for m in model.modules())
    params = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    return mods + params


@pytest.mark.parametrize("micro", [1, 2])
def test_every_records_what_every_step_records_with_hooks_only_on_recorded_steps(tmp_path, micro):
    """every=3 detaches the module and gradient hooks between recorded steps; the recorded steps hold
    exactly what an every-step run records at the same steps (also with gradient accumulation over
    ``micro`` batches), and pre-step logs land on their own step."""
    runs, hooked = {}, {}
    for every in (1, 3):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(1)
        counts = []
        with gradscope.watch(model, opt, log_dir=tmp_path / str(every), every=every, update_every=1,
                             tensorboard=False) as scope:
            for _ in range(10):
                counts.append(_hooked(model))
                for _ in range(micro):
                    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
                    loss = ((model(x) - y) ** 2).mean() / micro
                    scope.log(pre=loss)  # logged before optimizer.step(): belongs to this step
                    loss.backward()
                opt.step()
                opt.zero_grad()
                scope.log(loss=loss)
        runs[every], hooked[every] = gradscope.load_run(tmp_path / str(every)), counts
    dense, sparse = runs[1], runs[3]
    assert sparse.steps.tolist() == [0, 3, 6, 9]
    assert all(c > 0 for c in hooked[1])
    assert [c > 0 for c in hooked[3]] == [s % 3 == 0 for s in range(10)], hooked[3]
    for key, values in sparse.metrics.items():
        np.testing.assert_allclose(values, dense.metrics[key][[0, 3, 6, 9]], rtol=1e-6, err_msg=key)
    for name in ("loss", "pre", "grad_norm"):
        np.testing.assert_allclose(sparse.scalars[name], dense.scalars[name][[0, 3, 6, 9]], rtol=1e-6)
    np.testing.assert_array_equal(sparse.scalars["pre"], sparse.scalars["loss"])


class _Shapes(nn.Module):
    """ReLU-like outputs of every layout: NCHW (and channels-last), 3-D sequences, a module called
    twice a step, the generic Threshold path, and a 1-D output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.thr = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Threshold(0.1, -1.0)
        self.lin, self.relu6, self.seq = nn.Linear(8 * 6 * 6, 16), nn.ReLU6(), nn.ReLU()
        self.vec = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.thr(self.relu(self.conv(x)))
        z = self.lin(h.flatten(1))
        a, b = self.relu6(z), self.relu6(z * 3 - 2)  # one module, two calls
        t = self.seq(a.view(-1, 4, 4) - 0.5)
        v = self.vec(z[0] - 0.2)
        return (a + b).sum(1) + t.sum((1, 2)) + v.sum()


@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_like_stats_match_float64_reference_for_every_layout(run_dir, channels_last):
    model = _Shapes()
    with torch.no_grad():  # dead units to find: 3 of 8 conv channels, 4 of 16 linear units
        model.conv.bias[:3] = -50.0
        model.lin.bias[:4] = -50.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    calls: dict[str, list[torch.Tensor]] = {}
    names = ["relu", "thr", "relu6", "seq", "vec"]
    handles = [getattr(model, n).register_forward_hook(
        lambda m, a, out, n=n: calls.setdefault(n, []).append(out.detach().double().clone())) for n in names]
    g = torch.Generator().manual_seed(2)
    steps = 3
    with gradscope.watch(model, opt, log_dir=run_dir):
        for _ in range(steps):
            x = torch.randn(5, 3, 6, 6, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for h in handles:
        h.remove()
    run = gradscope.load_run(run_dir)
    cols = {r.name: c for c, r in enumerate(run.rows_of("act"))}
    for name in names:
        per_step = len(calls[name]) // steps
        for s in range(steps):
            ys = calls[name][s * per_step:(s + 1) * per_step]
            flat = torch.cat([y.reshape(-1) for y in ys])
            c = cols[name]
            assert run.metric("act", "mean")[s, c] == pytest.approx(flat.mean().item(), rel=1e-5, abs=1e-6)
            assert run.metric("act", "std")[s, c] == pytest.approx(flat.std(correction=0).item(), rel=1e-4)
            assert run.metric("act", "zero_frac")[s, c] == pytest.approx((flat == 0).double().mean().item())
            if ys[0].dim() >= 4:
                alive = torch.stack([(y > 0).any(0).any(-1).any(-1) for y in ys]).any(0)
            elif ys[0].dim() == 1:
                alive = torch.stack([(y > 0).any().reshape(1) for y in ys]).any(0)
            else:
                alive = torch.stack([(y > 0).reshape(-1, y.shape[-1]).any(0) for y in ys]).any(0)
            assert run.metric("act", "dead_frac")[s, c] == pytest.approx(1 - alive.double().mean().item()), name
    assert len(calls["relu6"]) == 2 * steps
    for name in ("relu", "relu6", "seq"):  # the reference is not trivially all-zero or all-positive
        assert 0 < run.metric("act", "zero_frac")[0, cols[name]] < 1, name
    assert run.metric("act", "dead_frac")[0, cols["relu"]] == pytest.approx(3 / 8)
    assert run.metric("act", "dead_frac")[0, cols["relu6"]] == pytest.approx(4 / 16)


def test_every_keeps_hooks_on_when_the_loop_calls_submodules(run_dir):
    """Without calls to the watched model itself nothing marks where an unrecorded step begins: the
    hooks then stay on, and a loss logged before optimizer.step() still lands on its own step."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logged = []
    with gradscope.watch(model, opt, log_dir=run_dir, every=3, tensorboard=False) as scope:
        for _ in range(7):
            x, y = batch()
            h = x
            for layer in model:  # submodules only
                h = layer(h)
            loss = ((h - y) ** 2).mean()
            scope.log(pre=loss)
            logged.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
            assert _hooked(model) > 0
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == [0, 3, 6]
    np.testing.assert_allclose(run.scalars["pre"], np.array(logged)[[0, 3, 6]], rtol=1e-6)
