"""Warnings for a loop that changed under the Scope, which would otherwise record NaN or stop recording.

Two changes are caught, each warned about once and recorded as an event: a watched parameter replaced by
a new object (``module.weight = nn.Parameter(...)``: the hooks stay on the old one), and an optimizer that
watch() was not given stepping the watched parameters (a new optimizer: steps are recorded at the given
one's ``step``). The first is checked once per flush, the second once per unknown optimizer: never per step.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


class Watchdog:
    """Held by the Scope among its hook handles: ``remove()`` (at close) detaches it."""

    def __init__(self, model: nn.Module, named: list[tuple[str, nn.Parameter]],
                 optimizers: list[torch.optim.Optimizer], event: Callable[..., None]) -> None:
        self._model = weakref.ref(model)
        self._named = list(named)
        self._ids = {id(p) for _, p in named}
        self._known = {id(o) for o in optimizers}
        self._seen: set[int] = set()
        self._warned: set[str] = set()
        self._event = event
        self._handle = register_optimizer_step_post_hook(self._on_any_step)

    def remove(self) -> None:
        self._handle.remove()
        self._named, self._ids = [], set()

    def check(self) -> None:
        """At a flush: has a watched parameter been replaced by another object?"""
        model = self._model()
        if model is None or not self._named or "replaced" in self._warned:
            return
        now = dict(model.named_parameters())
        replaced = [n for n, p in self._named if n in now and now[n] is not p]
        if replaced:
            self._warn("replaced", f"gradscope: parameter(s) {replaced[:5]} of the watched model were replaced by "
                       "new objects; gradscope's hooks are on the objects watch() saw, so their rows now record "
                       "nothing. Call watch() again after replacing parameters (scope.close(); "
                       "scope = gradscope.watch(model, optimizer, ...)).", params=replaced[:50])

    def _on_any_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        key = id(opt)
        if key in self._known or key in self._seen:
            return  # the common case: one set lookup per optimizer step
        self._seen.add(key)
        if any(id(p) in self._ids for group in opt.param_groups for p in group["params"]):
            self._warn("optimizer", f"gradscope: a {type(opt).__name__} that watch() was not given steps the "
                       "watched parameters; gradscope records a step at each step() of the optimizer it was "
                       "given, so steps of this one are not recorded. Pass the optimizer you step: "
                       "scope.close(); scope = gradscope.watch(model, new_optimizer, ...).",
                       optimizer=type(opt).__name__)

    def _warn(self, what: str, message: str, **data: Any) -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        self._event(f"{what}_unwatched" if what == "optimizer" else "param_replaced", **data)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
