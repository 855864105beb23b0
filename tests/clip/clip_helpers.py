"""Helpers for the clip tests: models with fresh random gradients and a float64 comparison."""

from __future__ import annotations

import torch


def mlp(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3)).to(dtype)
    m(torch.randn(5, 6, dtype=dtype)).pow(2).sum().backward()
    return m


def set_grads(params, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * scale + 1e-3).to(p.dtype)


def close(actual, expected, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),  # a Python float stays a double (not fp32 first)
        torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
    )
