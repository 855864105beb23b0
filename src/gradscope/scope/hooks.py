"""Hook factories: thin closures that forward to the Scope. They hold no state of their own.

Each hook is excluded from torch.compile tracing (``_eager``): compiled around, gradscope's Python
would otherwise be traced once per module and row until dynamo's recompile limit. Wrapping costs
~150 us, calling the wrapped hook ~0.4 us, so the Scope builds each hook once and reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from gradscope.scope.core import Scope


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
    return torch.compiler.disable(fn)


def forward_hook(scope: Scope, module_index: int) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        scope._on_forward(module_index, module, output)

    return _eager(hook)


def root_pre_hook(scope: Scope) -> Callable[[nn.Module, Any], None]:
    def hook(module: nn.Module, args: Any) -> None:
        scope._on_root_forward()

    return _eager(hook)


def flow_hook(scope: Scope, row: int) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:
        scope._on_flow(row, grad)

    return _eager(hook)


def accumulate_grad_hook(scope: Scope) -> Callable[[Tensor], None]:
    def hook(param: Tensor) -> None:
        scope._on_grad_accumulated(param)

    return _eager(hook)


def optimizer_pre_hook(scope: Scope) -> Callable[..., None]:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        scope._on_optimizer_pre_step(optimizer)

    return _eager(hook)


def optimizer_post_hook(scope: Scope) -> Callable[..., None]:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        scope._on_optimizer_step(optimizer)

    return _eager(hook)
