"""GradScopeCallback and watch() inside a real Lightning Trainer on CPU (tiny model, few steps).

Lightning's own ``grad_norm(module, 2)`` in ``on_before_optimizer_step`` (after the precision plugin
unscaled the gradients, before ``gradient_clip_val`` clips them) is the reference: gradscope's
recorded global norm must equal it at every optimizer step.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")  # installed by `make install-dev` (--no-deps, keeps torch)

import gradscope  # noqa: E402
from gradscope.integrations.lightning import GradScopeCallback  # noqa: E402

STEPS, ACCUM, BATCH, CLIP = 6, 2, 8, 0.5

pytestmark = pytest.mark.filterwarnings("ignore:.*(does not have many workers|LeafSpec|GPU available)")


def loader(n: int = 96, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :1] * 3 + torch.randn(n, 1, generator=g))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


class Net(pl.LightningModule):
    """Records Lightning's own total grad norm before each optimizer step (the reference)."""

    def __init__(self, manual: bool = False, watch_itself: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.automatic_optimization = not manual
        self.reference: list[float] = []
        self.losses: list[float] = []
        self.watch_itself = watch_itself
        self.scope = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y) * 4.0
        self.losses.append(float(loss.detach()))
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        self.manual_backward(loss / ACCUM)
        if (batch_idx + 1) % ACCUM == 0:  # accumulation by hand
            self.record_reference()  # here, before the clip (on_before_optimizer_step runs after it)
            self.clip_gradients(opt, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad()
        return None

    def on_before_optimizer_step(self, optimizer):
        if self.automatic_optimization:
            self.record_reference()

    def record_reference(self):
        from lightning.pytorch.utilities import grad_norm

        self.reference.append(float(grad_norm(self, 2)["grad_2.0_norm_total"]))

    def on_train_start(self):
        if self.watch_itself is not None:  # what a user writes inside the module
            self.scope = gradscope.watch(self, self.optimizers(), log_dir=self.watch_itself, tensorboard=False)

    def on_train_end(self):
        if self.scope is not None:
            self.scope.close()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fit(tmp_path, module, callbacks=(), **trainer_kwargs):
    kwargs = dict(max_steps=STEPS, accelerator="cpu", devices=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=2,
                  logger=pl.loggers.CSVLogger(str(tmp_path / "logs"), name="exp"))
    if module.automatic_optimization:
        kwargs.update(accumulate_grad_batches=ACCUM, gradient_clip_val=CLIP)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=list(callbacks), **kwargs)
    trainer.fit(module, loader())
    return trainer


@pytest.fixture(scope="module")
def automatic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pl")
    module, callback = Net(), GradScopeCallback(tensorboard=False)
    loggers = [pl.loggers.CSVLogger(str(tmp / "logs"), name="exp"), pl.loggers.TensorBoardLogger(str(tmp / "tb"))]
    trainer = fit(tmp, module, [callback], logger=loggers)
    return tmp, module, callback, trainer


def test_every_optimizer_step_equals_lightning_grad_norm(automatic):
    tmp, module, callback, trainer = automatic
    assert callback.log_dir == tmp / "logs" / "exp" / "version_0" / "gradscope"
    run = gradscope.load_run(callback.log_dir)
    assert trainer.global_step == STEPS and run.num_steps == STEPS
    assert run.steps.tolist() == list(range(STEPS))  # Lightning's step numbering
    np.testing.assert_allclose(run.scalars["grad_norm"], module.reference, rtol=1e-5)
    assert max(module.reference) > CLIP, "clipping never engaged: pre-clip would equal post-clip"
    # the loss: the mean of the step's micro-batch losses
    expect = np.array(module.losses).reshape(STEPS, ACCUM).mean(axis=1)
    np.testing.assert_allclose(run.scalars["loss"], expect, rtol=1e-5)
    assert any(e["kind"] == "lightning" and e["accumulate_grad_batches"] == ACCUM for e in run.events)
    assert callback.scope is None and not module._forward_hooks and not module.net[0]._forward_hooks


def test_headline_statistics_and_findings_reach_the_trainer_loggers(automatic):
    tmp, module, callback, trainer = automatic
    rows = list(csv.DictReader(open(tmp / "logs" / "exp" / "version_0" / "metrics.csv")))
    logged = {int(r["step"]): float(r["gradscope/grad_norm"]) for r in rows if r.get("gradscope/grad_norm")}
    assert logged, "no gradscope/grad_norm in the CSV logger"
    assert set(logged) <= set(range(STEPS)) and STEPS - 1 in logged
    for step, value in logged.items():
        assert value == pytest.approx(module.reference[step], rel=1e-5)
    counts = [r for r in rows if r.get("gradscope/error")]
    errors = sum(f.severity.value == "error" for f in callback.findings)
    assert counts and float(counts[-1]["gradscope/error"]) == errors
    # a TensorBoard logger also gets the findings as text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (tmp / "tb").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = [t for t in acc.Tags()["tensors"] if t.startswith("gradscope/findings")]
    body = acc.Tensors(text)[-1].tensor_proto.string_val[0].decode()
    assert f"gradscope analyze {callback.log_dir}" in body
    assert "gradscope/grad_norm" in acc.Tags()["scalars"]


def test_manual_optimisation_with_hand_accumulation(tmp_path):
    module, callback = Net(manual=True), GradScopeCallback(tensorboard=False)
    trainer = fit(tmp_path, module, [callback], max_steps=STEPS)
    run = gradscope.load_run(callback.log_dir)
    assert trainer.global_step == STEPS and run.num_steps == STEPS == len(module.reference)
    np.testing.assert_allclose(run.scalars["grad_norm"], module.reference, rtol=1e-5)
    assert max(module.reference) > CLIP


def test_watch_inside_the_module_with_self_optimizers_records_every_step(tmp_path):
    """self.optimizers() is a LightningOptimizer: watch() hooks the optimizer inside it."""
    module = Net(watch_itself=str(tmp_path / "run"))
    trainer = fit(tmp_path, module)
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == trainer.global_step == STEPS
    np.testing.assert_allclose(run.scalars["grad_norm"], module.reference, rtol=1e-5)


def test_16_mixed_uses_the_precision_plugin_scaler(tmp_path):
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    module, callback = Net(), GradScopeCallback(tensorboard=False)
    fit(tmp_path, module, [callback], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    run = gradscope.load_run(callback.log_dir)
    assert run.manifest["config"]["amp"] is True
    done = ~(run.scalars["amp_skipped"] > 0)
    assert run.num_steps == STEPS and done.sum() >= STEPS - 2
    # Lightning unscales before on_before_optimizer_step; the reference holds one value per step
    np.testing.assert_allclose(run.scalars["grad_norm"][done], np.array(module.reference)[done], rtol=1e-5)
    assert np.nanmax(run.scalars["amp_scale"]) >= 2.0**11  # the scaler was really scaling


def test_bf16_mixed_records_every_step(tmp_path):
    module, callback = Net(), GradScopeCallback(tensorboard=False)
    fit(tmp_path, module, [callback], precision="bf16-mixed")
    run = gradscope.load_run(callback.log_dir)
    assert run.num_steps == STEPS
    np.testing.assert_allclose(run.scalars["grad_norm"], module.reference, rtol=1e-5)


def test_a_second_fit_goes_to_a_new_run_directory(automatic, tmp_path):
    _, _, callback, _ = automatic
    again = GradScopeCallback(log_dir=callback.log_dir, tensorboard=False)
    fit(tmp_path, Net(), [again], max_steps=2)
    assert again.log_dir == callback.log_dir.with_name("gradscope-2")
    assert gradscope.load_run(callback.log_dir).num_steps == STEPS  # the first run is untouched


class Diverges(Net):
    """Logs like a Lightning user does; with ``nan_at`` its loss turns NaN from that step on."""

    def __init__(self, nan_at: int | None) -> None:
        super().__init__()
        self.nan_at = nan_at

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.nan_at is not None and self.global_step >= self.nan_at:
            loss = loss * float("nan")
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        from lightning.pytorch.utilities import grad_norm

        self.log_dict(grad_norm(self, 2))


@pytest.mark.parametrize("nan_at", [12, None])
def test_lightning_tensorboard_log_with_nan_loss_fails_the_gate(tmp_path, nan_at):
    """A foreign log (Lightning's TensorBoardLogger, its own tag names): NaN is a value, not "not logged";
    the same run without the NaN passes the gate (the negative control)."""
    pytest.importorskip("tensorboard")
    import json

    from click.testing import CliRunner

    from gradscope.cli import main

    logger = pl.loggers.TensorBoardLogger(str(tmp_path / "tb"), name="exp")
    fit(tmp_path, Diverges(nan_at), max_steps=24, logger=logger, log_every_n_steps=1)
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "tb"), "--format", "json", "--fail-on", "warning"])
    out = json.loads(res.stdout)
    assert out["summary"]["source"] == "tensorboard"
    kinds = [f["kind"] for f in out["findings"] if f["severity"] != "info"]
    if nan_at is not None:
        assert res.exit_code == 1 and "nonfinite" in kinds, res.output
        (f,) = [f for f in out["findings"] if f["kind"] == "nonfinite"]
        assert f["origin"]["step"] == nan_at
    else:
        assert res.exit_code == 0 and kinds == [], res.output


def test_works_with_the_older_pytorch_lightning_package(tmp_path):
    """Only `pytorch_lightning` importable (no unified `lightning`): the callback is its Callback."""
    pytest.importorskip("pytorch_lightning")
    import subprocess
    import sys

    code = f"""
import sys, warnings
warnings.simplefilter("ignore")
sys.modules["lightning"] = None  # as if only pytorch_lightning were installed
import torch, pytorch_lightning as pl
from gradscope.integrations.lightning import GradScopeCallback
import gradscope
assert issubclass(GradScopeCallback, pl.Callback)
class M(pl.LightningModule):
    def __init__(self):
        super().__init__(); self.net = torch.nn.Linear(4, 1)
    def training_step(self, batch, i):
        return self.net(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
cb = GradScopeCallback(tensorboard=False)
pl.Trainer(max_steps=3, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
           enable_checkpointing=False, logger=False, default_root_dir={str(tmp_path)!r},
           callbacks=[cb]).fit(M(), data)
print(gradscope.load_run(cb.log_dir).num_steps, "lightning" in sys.modules and sys.modules["lightning"] is None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["3", "True"]
