"""Hook factories: thin closures that forward to a handler. They hold no state of their own and
import nothing of the Scope (the parts pass their bound methods in).

Each hook is excluded from torch.compile tracing (``_eager``): compiled around, gradscope's Python
would otherwise be traced once per module and row until dynamo's recompile limit. Wrapping costs
~150 us, so each hook is built once and reused; an eager call only checks ``is_compiling()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn


class HookEntries:
    """Forward hooks of many modules taken off and put back as entries of the modules' hook dicts
    (under the ids their first registration gave them), so that ``every=N`` toggling creates no handle
    object per module and cycle (registering 5,000 hooks took ~26 ms and fed the garbage collector).
    ``remove`` takes them all off, like a handle's."""

    def __init__(self, entries: list[tuple[nn.Module, int, Any]]) -> None:
        self.entries = entries

    def attach(self) -> None:
        for module, key, hook in self.entries:  # the module's dict now, should anything have replaced it
            module._forward_hooks[key] = hook  # appended last, as a new registration would be

    def remove(self) -> None:
        for module, key, _ in self.entries:
            module._forward_hooks.pop(key, None)


def first_tensor(output: Any) -> Tensor | None:
    """The tensor a module produced: the output itself, or the first float tensor in a tuple/dict."""
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor) and item.is_floating_point():
                return item
    return None


def in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. an activation-checkpoint recompute)."""
    return torch._C._current_graph_task_id() != -1


def _eager(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` for eager calls; under dynamo tracing a ``torch.compiler.disable``d copy (a graph break,
    run eagerly). Calling the disabled wrapper every time costs ~1 us more per call than this check,
    which at two hook calls per module and step adds up."""
    disabled = torch.compiler.disable(fn)
    is_compiling = torch.compiler.is_compiling

    def hook(*args: Any) -> None:
        if is_compiling():
            return disabled(*args)
        return fn(*args)

    return hook


def forward_hook(on_forward: Callable[[int, nn.Module, Any, Any], None],
                 module_index: int) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        on_forward(module_index, module, args, output)

    return _eager(hook)


def input_pre_hook(on_input: Callable[[nn.Module, Any, Any], None]) -> Callable[..., None]:
    """A forward pre-hook (``with_kwargs=True``) calling ``on_input(module, args, kwargs)``."""
    def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
        on_input(module, args, kwargs)

    return _eager(hook)


def grad_hook(on_grad: Callable[[Tensor], None]) -> Callable[[Tensor], None]:
    """A tensor hook (it runs before the gradient is accumulated into a leaf's ``.grad``)."""
    def hook(grad: Tensor) -> None:
        on_grad(grad)

    return _eager(hook)


def root_pre_hook(on_root_forward: Callable[[], None]) -> Callable[[nn.Module, Any], None]:
    def hook(module: nn.Module, args: Any) -> None:
        on_root_forward()

    return _eager(hook)


def flow_hook(on_flow: Callable[[int, Tensor], None], row: int) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:
        on_flow(row, grad)

    return _eager(hook)


def flow_prehook(on_flow: Callable[[int, Tensor], None], row: int,
                 output_nr: int) -> Callable[[tuple[Tensor | None, ...]], None]:
    """A pre-hook on an output's autograd node: ``on_flow(row, grad)`` with that output's gradient."""
    def hook(grad_outputs: tuple[Tensor | None, ...]) -> None:
        g = grad_outputs[output_nr]
        if g is not None:
            on_flow(row, g)

    return _eager(hook)


def accumulate_grad_hook(on_grad: Callable[[Tensor], None]) -> Callable[[Tensor], None]:
    def hook(param: Tensor) -> None:
        on_grad(param)

    return _eager(hook)


def optimizer_hook(on_step: Callable[[Any], None]) -> Callable[..., None]:
    """An optimizer step pre- or post-hook calling ``on_step(optimizer)``."""
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        on_step(optimizer)

    return _eager(hook)
