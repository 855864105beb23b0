"""gradscope with accelerate: watch the prepared model and optimizer; accumulate and clip as usual.

    pip install accelerate
    python examples/accelerate_loop.py && gradscope analyze runs/accelerate
"""

import torch
from accelerate import Accelerator
from torch import nn

import gradscope

accelerator = Accelerator(gradient_accumulation_steps=4)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(4096, 16)
data = torch.utils.data.TensorDataset(x, x[:, :4].sum(dim=1, keepdim=True))
model, opt, loader = accelerator.prepare(model, opt, torch.utils.data.DataLoader(data, batch_size=32))

with gradscope.watch(model, opt, log_dir="runs/accelerate", overwrite=True) as scope:  # the one line
    for xb, yb in loader:
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)  # gradscope records the pre-clip norm
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
print("then: gradscope analyze runs/accelerate")
