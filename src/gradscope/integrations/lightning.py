"""GradScopeCallback: gradscope for a Lightning ``Trainer``.

    trainer = lightning.pytorch.Trainer(callbacks=[GradScopeCallback()])   # or pytorch_lightning.Trainer
    trainer.fit(model)        # the run lands in <trainer.log_dir>/gradscope; then: gradscope analyze it

At ``on_fit_start`` the callback watches the LightningModule and the torch optimizers the Trainer
built (the ones inside each ``LightningOptimizer``), with the precision plugin's GradScaler under
``16-mixed``, so statistics are unscaled and skipped steps recorded. Steps are optimizer steps
(automatic or manual optimisation, with ``accumulate_grad_batches``), numbered like the Trainer's
``global_step`` from where the fit starts, and measured before ``gradient_clip_val`` clips them.
The loss is the sum of the losses backpropagated in the step (so the mean micro-batch loss under
automatic accumulation), kept on the device. The headline statistics of each flush go to the
Trainer's loggers as ``gradscope/<name>``; at the end, the findings' counts (``gradscope/error``,
``/warning``, ``/info``) and, for a TensorBoard logger, the findings as text. Every rank watches
(DDP/FSDP reductions are collectives); only global rank 0 writes and logs.

Live findings (``watch``'s live diagnosis) reach the loggers while the fit runs: after each batch,
each new one as ``gradscope/findings/<kind>`` (0 info, 1 warning, 2 error) and, for a TensorBoard
logger, as ``gradscope/finding`` text with its remedy. ``stop_on="error"`` raises
:class:`gradscope.HealthError` out of ``trainer.fit()`` at the next optimizer step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gradscope._optional import require

try:  # the unified package, or the older `pytorch_lightning` one (the same Trainer)
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        require("lightning", "gradscope.integrations.lightning")  # raises, saying what to install
        raise

from gradscope.integrations._common import LiveFindings, findings_summary, findings_text
from gradscope.scope.core import Scope, watch
from gradscope.scope.setup import unwrap_optimizer

HEADLINE = ("grad_norm", "loss", "layer_grad_norm_min", "layer_grad_norm_max", "nonfinite", "amp_scale",
            "clip_coef")


class GradScopeCallback(Callback):
    """Records gradient and activation health of a Lightning fit; keyword arguments go to ``watch``.

    ``log_dir`` defaults to ``<trainer.log_dir>/gradscope`` (``-2``, ``-3``, ... when that already
    holds a run, unless ``overwrite=True``); ``flush_every`` defaults to the Trainer's
    ``log_every_n_steps``, so the loggers get a point as often as the Trainer logs its own metrics.
    After the fit, ``callback.log_dir`` is where the run is and ``callback.findings`` what it found.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, log_loss: bool = True,
                 log_metrics: bool = True, overwrite: bool = False, tensorboard: bool | None = None,
                 **watch_kwargs: Any) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._given_dir = self.log_dir
        self.log_loss, self.log_metrics = log_loss, log_metrics
        self.overwrite, self.tensorboard = overwrite, tensorboard
        self.watch_kwargs = watch_kwargs
        self.scope: Scope | None = None
        self.findings: list[Any] = []
        self.live: LiveFindings | None = None  # live findings (``live.seen``: all of them)
        self._primary: torch.optim.Optimizer | None = None
        self._loss: torch.Tensor | None = None
        self._logged_step = -1.0

    # -- Trainer events ---------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._close(trainer)
        opts = [unwrap_optimizer(o)[0] for o in trainer.optimizers]
        if not opts:
            raise TypeError("GradScopeCallback needs the Trainer's optimizers: configure_optimizers() returned none")
        self._primary = opts[0]
        base = self._given_dir or Path(trainer.log_dir or trainer.default_root_dir) / "gradscope"
        kwargs = dict(self.watch_kwargs)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # MixedPrecision under 16-mixed
        if isinstance(scaler, torch.amp.GradScaler):
            kwargs.setdefault("scaler", scaler)
        kwargs.setdefault("flush_every", max(1, int(trainer.log_every_n_steps or 50)))
        kwargs.setdefault("start_step", int(trainer.global_step))
        self.live = LiveFindings(kwargs.get("on_finding")) if kwargs.get("live", True) else None
        if self.live is not None:
            kwargs["on_finding"] = self.live
        self.scope = watch(pl_module, opts, log_dir=base, overwrite=self.overwrite,
                           tensorboard=self.tensorboard, **kwargs)
        self.log_dir = self.scope.log_dir  # base, or base-2, -3 ... (watch()'s one convention)
        self.scope.event("lightning", accumulate_grad_batches=trainer.accumulate_grad_batches,
                         gradient_clip_val=trainer.gradient_clip_val, precision=str(trainer.precision),
                         automatic_optimization=bool(pl_module.automatic_optimization),
                         global_step=int(trainer.global_step), world_size=int(trainer.world_size))

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if self.scope is not None and self.log_loss and isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())  # stays on the device: no sync
            self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.scope is None or unwrap_optimizer(optimizer)[0] is not self._primary:
            return
        if self._loss is not None:
            self.scope.log(loss=self._loss)  # the step the primary optimizer is about to take
        self._loss = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.scope is not None and self.log_metrics and trainer.is_global_zero:
            self._log_latest(trainer, self.scope)
            self._log_live(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.scope is not None:
            self.scope.event("exception", type=type(exception).__name__, message=str(exception)[:500])
        self._close(trainer, diagnose=False)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close(trainer, diagnose=False)

    # -- internals --------------------------------------------------------------------------------
    def _log_latest(self, trainer: Any, scope: Scope) -> None:
        """Send the last flushed step's headline statistics to the loggers (host floats: no sync)."""
        latest = scope.latest()
        step = latest.get("step")
        if step is None or step <= self._logged_step:
            return
        self._logged_step = step
        metrics = {f"gradscope/{k}": v for k, v in latest.items() if k in HEADLINE}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=int(step))

    def _log_live(self, trainer: Any) -> None:
        """The live findings since the last batch, to every logger (host values: no sync)."""
        found = self.live.take() if self.live is not None else []
        if not found:
            return
        step = int(trainer.global_step)
        metrics: dict[str, float] = {}
        for f in found:
            key = f"gradscope/findings/{f.kind}"
            metrics[key] = max(float(f.severity.rank), metrics.get(key, 0.0))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoardLogger's SummaryWriter
                for f in found:
                    experiment.add_text("gradscope/finding", f"**{f.severity.value}** `{f.kind}`: {f.message}"
                                        f"\n\nFix: {f.remedy}", global_step=step)

    def _close(self, trainer: Any, diagnose: bool = True) -> None:
        scope, self.scope, self._loss = self.scope, None, None
        if scope is None:
            return
        scope.close()
        if self.log_metrics and trainer.is_global_zero:
            self._log_latest(trainer, scope)  # a closed Scope still answers latest(): its last flush
            self._log_live(trainer)  # found when the run closed
        if diagnose and trainer.is_global_zero and self.log_dir is not None:
            self._log_findings(trainer)

    def _log_findings(self, trainer: Any) -> None:
        assert self.log_dir is not None
        counts, self.findings = findings_summary(self.log_dir)
        for logger in trainer.loggers:
            logger.log_metrics(counts, step=int(trainer.global_step))
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):  # TensorBoardLogger's SummaryWriter
                experiment.add_text("gradscope/findings", findings_text(self.findings, self.log_dir),
                                    global_step=int(trainer.global_step))
        for logger in trainer.loggers:
            logger.save()
