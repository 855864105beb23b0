"""Small data sets that need no download: synthetic tasks with a known answer."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def spirals(n: int = 2048, noise: float = 0.15, turns: float = 1.75, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two interleaved spirals in the plane (inputs [n, 2], labels 0/1): separable, but not linearly.

    Point i of arm k sits at radius r = t and angle 2*pi*turns*t + k*pi for t uniform in (0, 1],
    plus Gaussian noise of std ``noise``; a good classifier reaches ~100 % accuracy.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 0.95 + 0.05
    arm = torch.randint(0, 2, (n,), generator=g)
    angle = 2 * math.pi * turns * t + arm * math.pi
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
    x = x + noise * t.unsqueeze(1) * torch.randn(n, 2, generator=g)
    return x * 2.0, arm
