"""GPU check: a watched training step makes no host sync (run on a CUDA machine).

    python benchmarks/gpu_sync_check.py

The CPU test suite guards against ``.item()``-style calls and per-step ``torch.tensor(...)`` from
gradscope's code, but only CUDA can show a real synchronisation. This script trains a small MLP
(ReLU, Sigmoid, LayerNorm) with SGD (which itself never syncs), watched with everything on, for a
few warm-up steps, then runs steps under ``torch.cuda.set_sync_debug_mode("error")``: any
synchronising CUDA call (a blocking copy, ``.item()``, ``nonzero``) raises with its traceback. The
checked window holds no flush (``flush_every`` is larger than the run), the one place that copies to
the host, and covers ``every=1`` and ``every=3`` (hooks coming off and back on).
"""

from __future__ import annotations

import sys
import tempfile

import torch
from torch import nn

import gradscope


def check(every: int, warmup: int = 4, steps: int = 9) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.LayerNorm(128),
                          nn.Sigmoid(), nn.Linear(128, 10)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    x, y = torch.randn(256, 64, device=dev), torch.randint(0, 10, (256,), device=dev)
    with tempfile.TemporaryDirectory() as d:
        scope = gradscope.watch(model, opt, log_dir=d, every=every, update_every=2, flush_every=1000,
                                tensorboard=False)
        for i in range(warmup + steps):
            if i == warmup:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            gradscope.clip.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=loss.detach())
        torch.cuda.set_sync_debug_mode("default")
        scope.close()
        run = gradscope.load_run(d)
        assert run.num_steps == len(range(0, warmup + steps, every)), run.num_steps
    print(f"every={every}: {steps} watched steps, no host sync")


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    for every in (1, 3):
        check(every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
