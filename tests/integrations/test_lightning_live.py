"""Lightning's GradScopeCallback with live diagnosis: a NaN planted in one layer reaches the Trainer's
loggers while the fit runs and, with stop_on="error", stops trainer.fit() with the planted origin."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

import gradscope  # noqa: E402
from gradscope.integrations.lightning import GradScopeCallback  # noqa: E402

STEPS, NAN_STEP, FLUSH = 20, 6, 2

warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|GPU available).*")


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        if self.global_step == NAN_STEP:
            x = x * float("nan")  # a bad batch: the first layer's output goes NaN
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path, **callback_kwargs):  # noqa: ANN001, ANN201
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * 3)
    callback = GradScopeCallback(tensorboard=False, flush_every=FLUSH, flush_seconds=None,  # count-based flushes
                                 **callback_kwargs)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                         logger=pl.loggers.CSVLogger(str(tmp_path / "logs"), name="exp"), callbacks=[callback])
    return trainer, callback, torch.utils.data.DataLoader(data, batch_size=16)


def test_nan_stops_fit_with_the_planted_origin(tmp_path):
    trainer, callback, data = fit(tmp_path, stop_on="error")
    with pytest.raises(gradscope.HealthError) as info:
        trainer.fit(Net(), data)
    err = info.value
    assert (err.layer, err.phase, err.origin_step) == ("net.0", "forward", NAN_STEP)
    assert err.step == NAN_STEP + FLUSH  # the chunk of steps 6-7 is checked when step 8 begins
    run = gradscope.load_run(callback.log_dir)
    assert run.steps.tolist() == list(range(NAN_STEP + FLUSH))
    assert [e["type"] for e in run.events if e["kind"] == "exception"][0] == "HealthError"


def test_live_findings_reach_the_loggers_while_fitting(tmp_path):
    trainer, callback, data = fit(tmp_path)
    trainer.fit(Net(), data)
    assert trainer.global_step == STEPS  # report only: the fit goes on
    kinds = [f.kind for f in callback.live.seen]
    assert kinds.count("nonfinite") == 1
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    hits = [r for r in rows if r.get("gradscope/findings/nonfinite")]
    assert hits and float(hits[0]["gradscope/findings/nonfinite"]) == 2.0
    assert NAN_STEP < int(hits[0]["step"]) < STEPS  # during the fit, not only at its end
