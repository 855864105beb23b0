"""Batched module statistics (scope/batched.py): small outputs and output gradients reduced together.

Every statistic is checked against a float64 reference taken in the hook itself, over enough modules
that several batches drain per pass, and where an output is changed in place after its hook.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.scope import batched
from gradscope.scope.batched import SmallBatch


def test_small_batch_matches_float64_per_tensor():
    b = SmallBatch(torch.device("cpu"))
    shapes = [(3, 4), (12,), (3, 4), (2, 2, 3), (5,), (3, 4), (7, 1)]
    tensors = [torch.randn(s) * (k + 1) + k for k, s in enumerate(shapes)]
    tensors.append(torch.randn(4, 4, dtype=torch.float64))
    tensors.append((torch.randn(6, 5) * 300).to(torch.bfloat16))  # squares of 300^2 overflow no fp32 sum
    for k, t in enumerate(tensors):
        assert b.accepts(t)
        b.add(100 + k, t)
    done = b.drain()
    assert done is not None and len(b) == 0 and done.changed == []
    assert sorted(done.tags) == [100 + k for k in range(len(tensors))]
    for pos, tag in enumerate(done.tags):
        t = tensors[tag - 100].double()
        assert done.counts[pos] == t.numel()
        assert done.sums[pos].item() == pytest.approx(t.sum().item(), rel=1e-5, abs=1e-4)
        assert done.sumsq[pos].item() == pytest.approx((t * t).sum().item(), rel=1e-5)


def test_small_batch_reports_tensors_changed_in_place_and_refuses_large_ones():
    b = SmallBatch(torch.device("cpu"))
    a, c = torch.randn(8), torch.randn(8)
    b.add(1, a)
    b.add(2, c)
    c.mul_(2)  # after it was added: its values are not the ones its hook saw
    done = b.drain()
    assert done.changed == [2] and done.tags == (1,)
    assert done.sums[0].item() == pytest.approx(a.sum().item(), rel=1e-6)
    assert not b.accepts(torch.randn(batched.SMALL + 1))
    assert not b.accepts(torch.zeros(0)) and not b.accepts(torch.ones(4, dtype=torch.long))
    assert b.drain() is None


def test_small_batch_says_when_to_drain():
    b = SmallBatch(torch.device("cpu"))
    full = [b.add(k, torch.randn(2)) for k in range(batched.MAX_COUNT)]
    assert full[-1] and not any(full[:-1])


class Block(nn.Module):
    """A container with maths of its own around a small Linear (its output is NaN-checked)."""

    def __init__(self, width: int, inplace_relu: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.ReLU(inplace=True) if inplace_relu else nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + 0.5 * self.act(self.lin(x))  # an average: 300 of them neither explode nor vanish


def _reference_hooks(model: nn.Module, names: list[str]):
    """float64 copies of each named module's output (at hook time) and of the gradient reaching it."""
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())

    def keep(name):
        def hook(mod, args, out):
            outs[name].append(out.detach().double().clone())
            out.register_hook(lambda g: grads[name].append(g.double().clone()))
        return hook

    return outs, grads, [mods[n].register_forward_hook(keep(n)) for n in names]


@pytest.mark.parametrize("inplace_relu", [False, True])
def test_many_small_modules_match_float64(run_dir, inplace_relu):
    """300 blocks (600 act rows, several drains per pass); with an in-place ReLU after each Linear the
    Linear outputs change after their hook, so they must be measured in the hook, not later."""
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(8, inplace_relu) for _ in range(300)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Tanh, nn.ReLU))]
    outs, grads, handles = _reference_hooks(model, names)
    steps = 4
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=2) as scope:
        for _ in range(steps):
            x = torch.randn(5, 8)
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=0.0)
    for h in handles:
        h.remove()
    run = gradscope.load_run(run_dir)
    cols = {r.name: c for c, r in enumerate(run.rows_of("act"))}
    mean, std = run.metric("act", "mean"), run.metric("act", "std")
    flow = run.metric("flow", "norm")
    checked = 0
    for name in names:
        c = cols[name]
        for s in range(steps):
            y, g = outs[name][s], grads[name][s]
            assert mean[s, c] == pytest.approx(y.mean().item(), rel=1e-4, abs=1e-6), (name, s)
            assert std[s, c] == pytest.approx(y.std(correction=0).item(), rel=1e-4, abs=1e-6), (name, s)
            assert flow[s, c] == pytest.approx(g.norm().item(), rel=1e-4, abs=1e-9), (name, s)
            checked += 1
    assert checked == len(names) * steps and len(names) == 600
    assert np.isfinite(run.scalars["nonfinite_container"]).all()
    assert (run.scalars["nonfinite_container"] == -1).all()
    assert scope._module_side.act_batch is not None
    modes = scope._module_side.mode
    lin_rows = [cols[n] for n in names if n.endswith(".lin")]
    # Linear outputs are batched unless an in-place ReLU changes them; ReLU/Tanh rows are measured in the hook
    assert {modes[c] for c in lin_rows} == ({2} if inplace_relu else {1})


def test_container_nan_is_found_from_batched_sums(run_dir):
    """A NaN made by a container's own maths at step 2 is seen through the batched container sums."""
    torch.manual_seed(0)

    class Poison(Block):
        armed = False

        def forward(self, x):
            y = super().forward(x)
            return y * float("nan") if self.armed else y

    model = nn.Sequential(*[Block(4) for _ in range(200)], Poison(4), *[Block(4) for _ in range(5)])
    with gradscope.watch(model, log_dir=run_dir) as scope:  # no optimizer: the NaN never reaches the weights
        for step in range(4):
            model[200].armed = step == 2
            model(torch.randn(3, 4)).sum().backward()
            scope.step()
            model.zero_grad()
    run = gradscope.load_run(run_dir)
    containers = {c["name"]: c["order"] for c in run.manifest["containers"]}
    got = run.scalars["nonfinite_container"]
    assert got[2] == containers["200"]
    assert list(got[[0, 1, 3]]) == [-1, -1, -1]


def test_output_modified_in_place_only_later_is_dropped_once_then_measured_in_the_hook(run_dir):
    """An output that passes its probation and is changed in place later is not measured from the
    changed values: that call is left out (NaN) and the row is measured in its hook afterwards."""
    torch.manual_seed(0)

    class Later(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.clobber = False

        def forward(self, x):
            y = self.lin(x)
            return y.mul_(3.0) if self.clobber else y * 3.0

    model = Later()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    outs, _, handles = _reference_hooks(model, ["lin"])
    with gradscope.watch(model, opt, log_dir=run_dir):
        for step in range(5):
            model.clobber = step >= 2
            model(torch.randn(6, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    for h in handles:
        h.remove()
    run = gradscope.load_run(run_dir)
    c = [r.name for r in run.rows_of("act")].index("lin")
    mean = run.metric("act", "mean")[:, c]
    assert np.isnan(mean[2])
    for s in (0, 1, 3, 4):
        assert mean[s] == pytest.approx(outs["lin"][s].mean().item(), rel=1e-5, abs=1e-7)


def test_flow_of_a_module_whose_first_tensor_is_not_its_nodes_first_output(run_dir):
    """A module returning (b, a) of ``x.chunk(2)``: the flow row is the gradient reaching ``b``
    (output 1 of the chunk's autograd node), as a tensor hook on ``b`` sees it."""
    class Swap(nn.Module):
        def forward(self, x):
            a, b = x.chunk(2, dim=-1)
            return b, a

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.swap = Swap()

        def forward(self, x):
            b, a = self.swap(self.lin(x))
            return (3 * b).sum() + a.sum()

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.watch(model, opt, log_dir=run_dir):
        for _ in range(3):
            model(torch.randn(5, 4)).backward()
            opt.step()
            opt.zero_grad()
    run = gradscope.load_run(run_dir)
    c = [r.name for r in run.rows_of("flow")].index("swap")
    np.testing.assert_allclose(run.metric("flow", "norm")[:, c], [3 * (5 * 4) ** 0.5] * 3, rtol=1e-6)


def test_batched_path_copies_no_python_data_per_step(run_dir, no_host_sync):
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(6) for _ in range(150)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scope = gradscope.watch(model, opt, log_dir=run_dir, flush_every=3)
    mode = no_host_sync(scope)
    with mode:
        for _ in range(6):
            model(torch.randn(4, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    scope.close()
    assert mode.violations == []
    assert set(scope._module_side.mode) == {1, 2}  # batched rows (Linear) and hook-measured ones (Tanh)


def test_probation_judges_at_settle_and_bounds_what_it_holds(monkeypatch):
    p = batched.Probation()
    a, b = torch.randn(4), torch.randn(4)
    p.add(1, a)
    p.add(2, b)
    b.add_(1.0)  # changed after its hook, before the end of the pass
    assert p.settle() == [(1, True), (2, False)]
    assert p.settle() == []
    monkeypatch.setattr(batched, "MAX_ELEMENTS", 6)
    p.add(3, torch.randn(4))
    p.add(4, torch.randn(4))  # 4 elements held, under 6: taken
    p.add(5, torch.randn(4))  # 8 held: tag 5 waits for the next pass
    assert [tag for tag, _ in p.settle()] == [3, 4]
