"""gradscope with a Lightning Trainer: one callback, then ``gradscope analyze``.

    pip install --no-deps lightning pytorch-lightning lightning-utilities torchmetrics  # keeps your torch
    python examples/lightning_trainer.py --out runs/pl
    gradscope analyze runs/pl          # finds runs/pl/.../gradscope
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from gradscope.integrations.lightning import GradScopeCallback


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/pl")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    y = x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(2048, 1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    callback = GradScopeCallback()
    trainer = pl.Trainer(max_steps=args.steps, accumulate_grad_batches=2, gradient_clip_val=1.0,
                         default_root_dir=args.out, accelerator="cpu", enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[callback])
    trainer.fit(Regressor(), data)
    print(f"gradscope run: {callback.log_dir}; findings: {[f.kind for f in callback.findings] or 'none'}")


if __name__ == "__main__":
    main()
