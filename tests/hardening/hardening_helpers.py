"""Helpers of the hardening tests: fill a disk, tiny training loops, file trees, child processes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

import gradscope

SRC = str(Path(gradscope.__file__).resolve().parents[1])


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports this checkout's gradscope, single-threaded."""
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def fill(disk: Path) -> Path:
    """Fill the filesystem of ``disk`` to the last byte; delete the returned file to free it."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last partial blocks
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, ref: list | None = None, scope=None) -> None:
    """``steps`` SGD steps; ``ref`` gets each step's per-parameter grad norms in float64 (the reference)."""
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        if ref is not None:
            ref.append([p.grad.double().norm().item() for p in model.parameters()])
        opt.step()
        opt.zero_grad()
        if scope is not None:
            scope.log(loss=loss)


def tree(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: relative path -> sha256 of its bytes (or the link target)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = ("link:" + os.readlink(p)) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
