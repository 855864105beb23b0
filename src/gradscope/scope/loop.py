"""Training-loop checks of a Scope: what the loop does around the model, not inside it.

- Stale gradients (a forgotten ``optimizer.zero_grad()``): a tensor hook on two sentinel
  parameters sees, at the first backward after each optimizer step, whether ``.grad`` still holds
  the previous step's gradient (scalar ``stale_grad_norm``: its norm, 0 when cleared). Gradient
  accumulation *within* a step (several backwards before one ``step()``) is not affected: only the
  first backward of a step is checked.
- Clipping done by the loop itself: on update-sampled steps, the global norm of the gradients at
  ``optimizer.step()`` (scalar ``grad_norm_at_step``), to compare with the backward-end norm.
- Trainable parameters in no optimizer's param_groups (they get gradients and never move): checked
  once, at the first optimizer step, against every optimizer given to watch() (event
  ``not_in_optimizer`` with the names).
- The model's mode: scalar ``model_eval_mode`` (1 when the model was in eval mode at the first
  backward of the step: training with dropout off and BatchNorm frozen, the forgotten
  ``model.train()`` after a validation pass). From the first optimizer step taken in eval mode on,
  the Scope counts eval-mode passes as training passes, so the activation and flow rows are kept.
  With it, ``eval_mode_layers``: the fraction of the model's dropout and batch-norm layers that were
  in eval mode (a ``from_pretrained`` backbone inside a wrapper stays in eval mode until
  ``model.train()`` is called on the wrapper).
- The model's input: mean, std, max |x| and a non-finite flag of the first floating-point tensor
  passed to the model's forward (scalars ``input_mean``, ``input_std``, ``input_absmax``,
  ``input_nonfinite``), once per recorded step. Integer inputs (token ids) are skipped, and so is
  everything when watch() has no module hooks (``activations=False, flow=False``).

Nothing here syncs: values stay device tensors until the flush.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradscope.run.format import MODE_TYPES
from gradscope.scope import hooks
from gradscope.scope.step import StepState


def _first_float(args: Any, kwargs: Mapping[str, Any] | None) -> Tensor | None:
    for item in list(args) + list((kwargs or {}).values()):
        if isinstance(item, Tensor) and item.is_floating_point():
            return item
    return None


class LoopChecks:
    """Stale gradients, parameters outside every optimizer, and input statistics."""

    def __init__(self, model: nn.Module, named: list[tuple[str, nn.Parameter]], state: StepState,
                 optimizers: list[torch.optim.Optimizer], begin_activity: Callable[[], None],
                 event: Callable[..., None]) -> None:
        self.model = model
        self.named = named
        self.state = state
        self.optimizers = optimizers
        self.begin_activity, self.event = begin_activity, event
        # Sentinels among the parameters an optimizer owns: zero_grad clears those (a parameter in
        # no optimizer keeps its gradient, which not_in_optimizer reports).
        owned = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
        trainable = [p for _, p in named if p.requires_grad and id(p) in owned]
        self.sentinels = list({id(p): p for p in (trainable[:1] + trainable[-1:])}.values())
        self.backward_seen = False  # a backward already ran in this optimizer step
        self.input_seen = False
        self.checked_optimizers = False
        self.mode_modules = [m for m in model.modules() if type(m).__name__ in MODE_TYPES]
        # Values of the current step, written into its slot when the optimizer steps: opening the
        # slot earlier would record a step that never reached optimizer.step() (a stop_on stop).
        self.pending: dict[str, Tensor | float] = {}

    def attach(self, handles: list[Any], module_hooks: bool = True) -> None:
        """The input pre-hook (only with module hooks: ``activations=False, flow=False`` promises a
        model without module hooks, nothing to break a torch.compile graph), the sentinels' gradient
        hooks and the first-step check."""
        if module_hooks:
            handles.append(self.model.register_forward_pre_hook(hooks.input_pre_hook(self.on_input),
                                                                with_kwargs=True))
        for p in self.sentinels:
            handles.append(p.register_hook(hooks.grad_hook(self._sentinel(p))))
        if self.optimizers:
            handles.append(self.optimizers[0].register_step_pre_hook(hooks.optimizer_hook(self.on_first_step)))

    def on_stepped(self) -> None:
        """The optimizer stepped: write this step's values; the next backward is the first of a new step."""
        state = self.state
        if self.pending and state.slot is not None and not state.closed:
            for name, value in self.pending.items():
                state.buffers.put_scalar(name, state.slot, value)
        self.pending = {}
        self.backward_seen = False
        self.input_seen = False
        if self.model is not None:
            state.eval_trains = not self.model.training

    # -- stale gradients ------------------------------------------------------------------------
    def _sentinel(self, p: nn.Parameter) -> Callable[[Tensor], None]:
        def on_grad(grad: Tensor) -> None:
            state = self.state
            if state.closed or self.backward_seen:
                return
            self.backward_seen = True
            if not self.optimizers:
                return  # steps closed by hand: zero_grad is the loop's business
            self.begin_activity()
            if not state.scheduled():
                return
            old = p.grad  # before this backward accumulates into it
            value: Tensor | float = 0.0 if old is None else torch.linalg.vector_norm(old.detach()).float()
            self.pending["stale_grad_norm"] = value
            self.pending["model_eval_mode"] = 0.0 if self.model.training else 1.0
            if self.mode_modules:
                off = sum(not m.training for m in self.mode_modules)
                self.pending["eval_mode_layers"] = off / len(self.mode_modules)

        return on_grad

    # -- parameters outside every optimizer -----------------------------------------------------
    def on_first_step(self, optimizer: Any) -> None:
        if self.state.closed:
            return
        self._norm_at_step(optimizer)
        if self.checked_optimizers:
            return
        self.checked_optimizers = True
        owned = {id(p) for opt in self.optimizers for g in opt.param_groups for p in g["params"]}
        missing = [n for n, p in self.named if p.requires_grad and id(p) not in owned]
        if missing:
            self.event("not_in_optimizer", params=missing[:1000], count=len(missing))

    def _norm_at_step(self, optimizer: Any) -> None:
        """On update-sampled steps, the global norm of the gradients the optimizer is about to apply
        (scalar ``grad_norm_at_step``): below the backward-end norm when the loop clips or scales them."""
        state = self.state
        if not state.update_sampled():
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or any(type(t) is not Tensor for t in grads):  # DTensor shards: norms are partial
            return
        norms = torch._foreach_norm([t.detach() for t in grads])
        total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
        self.pending["grad_norm_at_step"] = total

    # -- input ----------------------------------------------------------------------------------
    def on_input(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        state = self.state
        if state.closed or not state.trains(module) or not torch.is_grad_enabled() or hooks.in_backward():
            return
        self.begin_activity()
        if self.input_seen or not state.scheduled():
            return
        x = _first_float(args, kwargs)
        if x is None or x.numel() == 0:
            return
        self.input_seen = True
        x = x.detach()
        std, mean = torch.std_mean(x.float() if x.dtype != torch.float32 else x)
        self.pending.update(input_mean=mean, input_std=std,
                            input_absmax=torch.linalg.vector_norm(x, float("inf")).float(),
                            input_nonfinite=(~torch.isfinite(x).all()).float())

    def close(self) -> None:
        self.model, self.named, self.sentinels, self.optimizers = None, [], [], []  # type: ignore[assignment]
        self.mode_modules = []
