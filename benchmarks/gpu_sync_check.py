"""GPU check: a watched training step makes no host sync (run on a CUDA machine).

    python benchmarks/gpu_sync_check.py

The CPU test suite guards against ``.item()``-style calls and per-step ``torch.tensor(...)`` from
gradscope's code, but only CUDA can show a real synchronisation. This script trains a small MLP
(ReLU, Sigmoid, LayerNorm) with SGD (which itself never syncs), watched with everything on, for a
few warm-up steps, then runs steps under ``torch.cuda.set_sync_debug_mode("error")``: any
synchronising CUDA call (a blocking copy, ``.item()``, ``nonzero``) raises with its traceback. The
checked window holds no flush (``flush_every`` is larger than the run), the one place that copies to
the host, and covers ``every=1`` and ``every=3`` (hooks coming off and back on).

The syncs it would have stopped at on its first checked step (the learning rate and Python-number
``scope.log`` values written into device tensors; the torch clip's per-step element-count tensor)
are fixed and guarded by the CPU suite (tests/conftest.py). ``--cpu`` runs the same loop on the CPU
without the sync check, to see the script's own logic work on a machine without CUDA.
"""

from __future__ import annotations

import sys
import tempfile

import torch
from torch import nn

import gradscope


def check(every: int, warmup: int = 4, steps: int = 9, device: str = "cuda") -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.LayerNorm(128),
                          nn.Sigmoid(), nn.Linear(128, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    x, y = torch.randn(256, 64, device=dev), torch.randint(0, 10, (256,), device=dev)
    with tempfile.TemporaryDirectory() as d:
        scope = gradscope.watch(model, opt, log_dir=d, every=every, update_every=2, flush_every=1000,
                                tensorboard=False)
        for i in range(warmup + steps):
            if i == warmup and cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            gradscope.clip.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=loss.detach())
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        scope.close()
        run = gradscope.load_run(d)
        assert run.num_steps == len(range(0, warmup + steps, every)), run.num_steps
    checked = "no host sync" if cuda else "CPU dry run, syncs not checked"
    print(f"every={every}: {steps} watched steps, {checked}")


def main(argv: list[str]) -> int:
    device = "cpu" if "--cpu" in argv else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA device (or --cpu for a dry run of the script's logic)")
        return 2
    for every in (1, 3):
        check(every, device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
