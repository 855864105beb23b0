"""Train one MLP configuration with gradscope watching; the loop the compare harness runs per config.

Everything random comes from the config's seed (weights from ``torch.manual_seed``, batches from a
seeded generator), so on CPU the same config gives the same numbers, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradscope.clip import make_clipper
from gradscope.experiments.grid import Config
from gradscope.experiments.models import mlp
from gradscope.experiments.tasks import load
from gradscope.scope.core import watch

WIDTH = 64
# Thresholds of the clipping strategies in the comparison (others at their defaults).
# norm: the usual max_norm = 1 ; value: |g| <= 0.05 ; agc: Brock et al.'s lambda = 0.01 per unit;
# autoclip: 10th percentile of past norms (Seetharaman et al.); zclip: z > 2.5 on an EMA (Kumar et al.).
CLIP_KWARGS: dict[str, dict[str, Any]] = {
    "none": {}, "norm": {"max_norm": 1.0}, "value": {"clip_value": 0.05}, "layer": {"max_norm": 0.5},
    "agc": {"clipping": 0.01}, "autoclip": {"percentile": 10.0},
    "zclip": {"z_thresh": 2.5, "max_grad_norm": None},  # the adaptive rule alone (its 1.0 cap would equal "norm")
}


def clipper_for(cfg: Config) -> Any:
    """The gradscope clipper of ``cfg.clip`` ("none" measures only, so every run records clip_coef)."""
    return make_clipper(cfg.clip, **CLIP_KWARGS.get(cfg.clip, {}))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``x, y``, in eval mode without gradients."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    model.train(was)
    return loss, acc


def train_mlp(cfg: Config, log_dir: Path, tensorboard: bool | None = False) -> dict[str, float]:
    """Train ``cfg`` on its task with gradscope watching into ``log_dir``; final train/test metrics."""
    data = load(cfg.task)
    torch.manual_seed(cfg.seed)
    model = mlp(data.in_dim, data.classes, cfg.width or WIDTH, cfg.depth or 1,
                activation=cfg.activation or "relu", init=cfg.init or "default")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, foreach=True)  # one kernel per op: 2x faster here
    clip = clipper_for(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = data.x_train.shape[0]
    batch = min(cfg.batch, n)
    # live=False: the harness diagnoses each run itself once it is done (runner.py)
    with watch(model, opt, log_dir=log_dir, overwrite=True, flush_every=max(cfg.steps, 1),
               tensorboard=tensorboard, live=False) as scope:
        for _ in range(cfg.steps):
            idx = torch.randperm(n, generator=gen)[:batch] if batch == n else torch.randint(
                0, n, (batch,), generator=gen)
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip(model.parameters())
            opt.step()
            scope.log(loss=loss)
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
