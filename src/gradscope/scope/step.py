"""Where a watched run is: the step index, its schedule and its slot in the step buffers.

One ``StepState`` is shared by the parts of a Scope (parameter side, module side); it holds no
hooks and no tensors of its own, so every part reads the same answer to "is this step recorded?".
"""

from __future__ import annotations

from typing import Any

from gradscope.scope.buffers import StepBuffers


class StepState:
    """Step index and schedule (``every``, ``update_every``), the open slot, pending events."""

    def __init__(self, every: int, update_every: int, buffers: StepBuffers) -> None:
        self.every, self.update_every = every, update_every
        self.buffers = buffers
        self.index = 0  # optimizer steps since watch()
        self.stepped = False  # the optimizer stepped: the step closes at the next activity
        self.slot: int | None = None
        self.closed = False
        self.rows_dirty = True  # the manifest must be written again (new rows, depths, shapes)
        self.events: list[dict[str, Any]] = []
        # The model was in eval mode when the optimizer last stepped: it trains in eval mode (a
        # model.eval() for validation without model.train() after), so its eval passes are steps.
        self.eval_trains = False

    def scheduled(self) -> bool:
        """Whether the current step is recorded (every ``every``-th)."""
        return self.index % self.every == 0

    def update_sampled(self) -> bool:
        """Whether the current step also samples the update ratio (it needs a weight copy)."""
        return self.scheduled() and (self.index // self.every) % self.update_every == 0

    def ensure_slot(self) -> int:
        """The buffer slot of the current step, opened on first use."""
        if self.slot is None:
            self.slot = self.buffers.open_slot(self.index)
        return self.slot

    def trains(self, model: Any) -> bool:
        """Whether a grad-enabled pass through the watched ``model`` is a training pass: train mode,
        or eval mode in a loop that has been stepping the optimizer in eval mode."""
        return bool(model.training) or self.eval_trains

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"step": self.index, "kind": kind, **data})
