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


def plan(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> tuple[list[tuple[str, nn.Parameter]], list[int], list[Row], list[tuple[nn.Module, ModuleInfo]]]:
    """All named parameters (tied ones once), the watched ones, their rows, and the modules to hook.

    A module is hooked when it is a selected leaf (activation and flow rows) or owns a watched
    parameter (its first forward call gives those parameters their depth).
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
        if watch or name in owner_rows:
            info = ModuleInfo(name or type(m).__name__, type(m).__name__, watch, owner_rows.get(name, []))
            hooked.append((m, info))
    return named, watched, rows, hooked
