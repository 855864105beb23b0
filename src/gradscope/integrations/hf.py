"""GradScopeCallback: gradscope for a ``transformers.Trainer``.

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[GradScopeCallback()])
    trainer.train()            # the run lands in <output_dir>/gradscope; then: gradscope analyze it

At ``on_train_begin`` the Trainer has built its optimizer; the callback watches the model and the
torch optimizer inside accelerate's wrapper. The Scope measures the gradients when each backward
ends, so under gradient accumulation it records the accumulated gradients once per optimizer step,
before the Trainer clips them to ``max_grad_norm``: ``run.scalars["grad_norm"]`` is the same number
as the Trainer's logged ``grad_norm``. Under fp16 the callback hands accelerate's GradScaler to the
Scope, so the statistics are unscaled. The loss (mean of the micro-batches' ``outputs.loss``) is
logged on the device, without a host sync. Steps are numbered like the Trainer's ``global_step``
(the first optimizer step is 1, as in ``trainer.state.log_history``), so curves overlay in TensorBoard.
At each of the Trainer's logging steps the headline statistics join its logs as ``gradscope/<name>``,
and the final log gets the findings (``gradscope/error``, ``/warning``, ``/info`` counts and
``gradscope/findings/<kind>`` = 0 info, 1 warning, 2 error), so they reach whatever ``report_to``
is; the callback places itself before the reporting callbacks for that. Every rank watches, as the
Scope's distributed reductions need; only world rank 0 writes the run.

Live findings (``watch``'s live diagnosis) are logged by the ``gradscope`` logger; each new one is
added to the Trainer's ``state.log_history`` (so to ``trainer_state.json``) at the next step as
``{"gradscope_finding": kind, "severity", "layers", "message", "step"}`` and to its next training
log as ``gradscope/findings/<kind>`` (so it reaches ``report_to`` while training runs);
``stop_on="error"`` raises :class:`gradscope.HealthError` out of ``trainer.train()`` at the next
optimizer step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from gradscope._optional import require

require("transformers", "gradscope.integrations.hf")

from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import CallbackHandler  # noqa: E402

from gradscope.integrations._common import findings_summary  # noqa: E402
from gradscope.scope.core import Scope, watch  # noqa: E402
from gradscope.scope.setup import unwrap_optimizer  # noqa: E402

HEADLINE = ("grad_norm", "loss", "layer_grad_norm_min", "layer_grad_norm_max", "nonfinite", "amp_scale")


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer a Trainer steps (accelerate wraps it; the wrapper's step calls the inner one)."""
    try:
        return unwrap_optimizer(optimizer)[0]
    except TypeError:
        return None


class GradScopeCallback(TrainerCallback):
    """Records gradient and activation health of a Trainer run; keyword arguments go to ``watch``.

    ``log_dir`` defaults to ``<output_dir>/gradscope`` (``-2``, ``-3``, ... if that already holds a
    run, unless ``overwrite=True``). After training, ``callback.log_dir`` is where the run is.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, log_loss: bool = True,
                 overwrite: bool = False, tensorboard: bool | None = None, **watch_kwargs: Any) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._given_dir = self.log_dir
        self.log_loss, self.overwrite, self.tensorboard = log_loss, overwrite, tensorboard
        self.watch_kwargs = watch_kwargs
        self.scope: Scope | None = None
        self.live_findings: list[Any] = []  # every live finding reported, in order
        self._unlogged: list[Any] = []  # appended on gradscope's writer thread, drained here
        self._unreported: list[Any] = []  # the same, for the next training log
        self._hook: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._logged_step = -1.0
        self.findings: list[Any] = []

    def _go_first(self) -> None:
        """Move this callback before the reporting callbacks (TensorBoard, wandb, ...), which the
        Trainer puts first, so the ``gradscope/`` entries it adds to ``logs`` reach them. Called from
        CallbackHandler.call_event's loop: moving an already-visited item to the front keeps the
        loop's next item."""
        handler = sys._getframe(2).f_locals.get("self")
        if isinstance(handler, CallbackHandler) and self in handler.callbacks:
            handler.callbacks.remove(self)
            handler.callbacks.insert(0, self)

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._go_first()

    # -- Trainer events ---------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if model is None:
            return  # every rank watches (FSDP norms and the flush reductions are collectives); rank 0 writes
        self._go_first()
        self._close()
        opt = torch_optimizer(optimizer)
        if opt is None:
            raise TypeError(f"GradScopeCallback needs the Trainer's torch optimizer, got {type(optimizer)}; "
                            "pass optimizers=(...) a torch.optim.Optimizer")
        base = self._given_dir or Path(args.output_dir) / "gradscope"
        kwargs = dict(self.watch_kwargs)
        kwargs.setdefault("start_step", int(state.global_step) + 1)  # the Trainer counts steps from 1
        if isinstance(args.logging_steps, int) and args.logging_steps >= 1:
            kwargs.setdefault("flush_every", args.logging_steps)
        scaler = getattr(optimizer, "scaler", None)  # accelerate's GradScaler under fp16
        if isinstance(scaler, torch.amp.GradScaler):
            kwargs.setdefault("scaler", scaler)
        if kwargs.get("live", True):
            kwargs["on_finding"] = self._forward(kwargs.get("on_finding"))
        self.scope = watch(model, opt, log_dir=base, overwrite=self.overwrite,
                           tensorboard=self.tensorboard, **kwargs)
        self.log_dir = self.scope.log_dir  # base, or base-2, -3 ... (watch()'s one convention)
        self.scope.event("trainer", gradient_accumulation_steps=args.gradient_accumulation_steps,
                         max_grad_norm=args.max_grad_norm, learning_rate=args.learning_rate,
                         per_device_train_batch_size=args.per_device_train_batch_size,
                         global_step=state.global_step)
        if self.log_loss:
            self._hook = model.register_forward_hook(self._on_model_output)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.scope is not None and self._loss_sum is not None:
            self.scope.log(loss=self._loss_sum / self._loss_n)  # a device tensor: no sync
        self._loss_sum, self._loss_n = None, 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Add gradscope's headline statistics (training logs) or findings (the final summary) to ``logs``."""
        if self.scope is None or logs is None:
            return
        if "train_runtime" in logs:  # the Trainer's end-of-training summary: training is over
            self._close()
            if state.is_world_process_zero and self.log_dir is not None:
                counts, self.findings = findings_summary(self.log_dir)
                logs.update(counts)
                for f in self.findings:
                    key = f"gradscope/findings/{f.kind}"
                    logs[key] = max(float(f.severity.rank), logs.get(key, 0.0))
            return
        if "loss" not in logs and "grad_norm" not in logs:
            return  # an evaluation log
        # The Trainer has just synced for its own logs (loss.item()); this flush is the same kind of
        # deliberate sync, once per logging step, so the statistics are those of this very step.
        self.scope.flush(wait=True)
        latest = self.scope.latest()
        if state.is_world_process_zero and latest.get("step", -1.0) > self._logged_step:
            self._logged_step = latest["step"]
            logs.update({f"gradscope/{k}": v for k, v in latest.items() if k in HEADLINE})
        while self._unreported:  # live findings since the last log
            f = self._unreported.pop(0)
            key = f"gradscope/findings/{f.kind}"
            logs[key] = max(float(f.severity.rank), logs.get(key, 0.0))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._log_findings(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()
        self._log_findings(state)  # the findings of the complete run

    # -- internals --------------------------------------------------------------------------------
    def _forward(self, user: Any) -> Any:
        def on_finding(finding: Any) -> None:  # the writer thread: only hand the finding over
            self.live_findings.append(finding)
            self._unlogged.append(finding)
            self._unreported.append(finding)
            if user is not None:
                user(finding)

        return on_finding

    def _log_findings(self, state: Any) -> None:
        while self._unlogged:
            f = self._unlogged.pop(0)
            state.log_history.append({"gradscope_finding": f.kind, "severity": f.severity.value,
                                      "layers": list(f.layers), "message": f.message,
                                      "step": state.global_step})

    def _on_model_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.scope is not None:
            self.scope.close()
            self.scope = None
        self._loss_sum, self._loss_n = None, 0
