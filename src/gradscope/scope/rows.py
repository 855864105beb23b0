"""Which parameters and modules a Scope watches, and the rows they become (names, depth order)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from gradscope.run.format import Row


def selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Glob selection on row names: in ``include`` (all when None) and in no ``exclude`` pattern."""
    if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))


@dataclass
class ModuleInfo:
    """A hooked module: its name, whether it gets act/flow rows, and the param rows it owns."""

    name: str
    module_type: str
    watched: bool
    param_rows: list[int] = field(default_factory=list)
    depth: int | None = None
    act_row: int | None = None
    shape: list[int] | None = None  # output shape at the first recorded call
    container: bool = False  # a module with children and maths of its own: its output is NaN-checked
    order: int | None = None  # first-forward order among containers (post-order, like depth)
    after_depth: int | None = None  # the depth of the last leaf that ran before its first forward


# Containers that only call their children: no maths of their own, so no NaN can start there.
PURE_CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"})


def plan(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> tuple[list[tuple[str, nn.Parameter]], list[int], list[Row], list[tuple[nn.Module, ModuleInfo]]]:
    """All named parameters (tied ones once), the watched ones, their rows, and the modules to hook.

    A module is hooked when it is a selected leaf (activation and flow rows), owns a watched
    parameter (its first forward call gives those parameters their depth), or is a selected
    container with a forward of its own (its output is checked for NaN/Inf, so that a NaN made by a
    block's own maths is traced to the block, not to the next leaf).
    """
    named = list(model.named_parameters())
    modules = dict(model.named_modules())
    watched = [i for i, (n, _) in enumerate(named) if selected(n, include, exclude)]
    rows: list[Row] = []
    owner_rows: dict[str, list[int]] = {}
    for col, i in enumerate(watched):
        name, p = named[i]
        owner = name.rpartition(".")[0]
        rows.append(
            Row(name, "param", type(modules.get(owner, model)).__name__, list(p.shape), None, p.requires_grad)
        )
        owner_rows.setdefault(owner, []).append(col)
    hooked = []
    for name, m in modules.items():
        leaf = next(iter(m.children()), None) is None
        watch = leaf and selected(name or type(m).__name__, include, exclude)
        container = (not leaf and type(m).__name__ not in PURE_CONTAINERS
                     and selected(name or type(m).__name__, include, exclude))
        if watch or name in owner_rows or container:
            info = ModuleInfo(name or type(m).__name__, type(m).__name__, watch, owner_rows.get(name, []),
                              container=container)
            hooked.append((m, info))
    return named, watched, rows, hooked
