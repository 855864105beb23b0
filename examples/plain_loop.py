"""A plain PyTorch loop with gradscope watching: one line added, then the report.

    python examples/plain_loop.py && gradscope analyze runs/plain
"""

import torch
from torch import nn

import gradscope

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(2048, 20), torch.randint(0, 2, (2048,))

with gradscope.watch(model, opt, log_dir="runs/plain", overwrite=True) as scope:  # the one line
    for _step in range(200):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # gradscope records the pre-clip norm
        opt.step()
        opt.zero_grad(set_to_none=True)
        scope.log(loss=loss)  # stays on the device: no sync

run = gradscope.load_run("runs/plain")
print(f"{run.num_steps} steps, global grad norm median {float(torch.tensor(run.scalars['grad_norm']).median()):.3g}")
