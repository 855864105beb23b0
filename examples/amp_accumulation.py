"""Mixed precision (GradScaler) with gradient accumulation, watched by gradscope.

gradscope records one step per optimizer step (on the accumulated gradient), divides its gradient
statistics by the loss scale in force (so they are unscaled), and records the loss scale and the
steps the scaler skipped. On a GPU use device="cuda" and dtype=torch.float16.

    python examples/amp_accumulation.py && gradscope analyze runs/amp
"""

import torch
from torch import nn

import gradscope

device, dtype, accum = "cpu", torch.bfloat16, 4
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 4)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler(device, init_scale=2.0**14)
x, y = torch.randn(4096, 32, device=device), torch.randint(0, 4, (4096,), device=device)

with gradscope.watch(model, opt, log_dir="runs/amp", scaler=scaler, overwrite=True) as scope:
    for _step in range(100):
        for _micro in range(accum):
            idx = torch.randint(0, len(x), (32,), device=device)
            with torch.autocast(device, dtype=dtype):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx]) / accum
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        scope.log(loss=loss * accum)

run = gradscope.load_run("runs/amp")
print(f"{run.num_steps} optimizer steps recorded; loss scale {run.scalars['amp_scale'][-1]:.0f}")
