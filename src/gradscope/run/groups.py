"""Layer groups: the rows of a run grouped so that a picture of 10 rows and one of 5,000 both read.

A transformer groups by block (``encoder.layer.3``: the module path up to its first numeric part); a
plain stack with few layers keeps one group per layer; a deep plain stack (or thousands of blocks)
is cut into MAX_BUCKETS contiguous depth buckets. One grouping serves every row kind (a param row
belongs to its module, act and flow rows are modules), in forward (depth) order, so TensorBoard
runs, plot labels and the HTML table agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gradscope.run.format import Row

MAX_BLOCKS = 64  # more blocks than this are bucketed by depth
MAX_LAYERS = 32  # a plain stack with up to this many modules keeps one group per module
MAX_BUCKETS = 16


@dataclass
class Group:
    """Consecutive modules (by depth): ``label`` for display, ``prefix`` stripped to name roles."""

    label: str
    prefix: str
    modules: list[str] = field(default_factory=list)


@dataclass
class Grouping:
    """Groups in depth order; ``of(kind)`` gives, per group, the column indices of that kind's rows."""

    by: str  # "block", "layer" or "depth"
    groups: list[Group]
    columns: dict[str, list[list[int]]]  # kind -> per group: columns of rows of that kind (depth order)
    roles: dict[str, list[str]]  # kind -> per column: the row's name inside its group

    def of(self, kind: str) -> list[list[int]]:
        return self.columns.get(kind, [[] for _ in self.groups])


def module_of(row: Row) -> str:
    """The module a row belongs to: a parameter's owner, or the module itself for act/flow rows."""
    return row.name.rpartition(".")[0] if row.kind == "param" else row.name


def block_of(name: str, kind: str) -> str:
    """The block a row belongs to: the module path up to its first numeric part (``encoder.layer.3``),
    else the parent of the module (``bert.embeddings``), else the module itself (``classifier``)."""
    module = name.rpartition(".")[0] if kind == "param" else name
    parts = module.split(".") if module else []
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    if len(parts) >= 2:
        return ".".join(parts[:-1])
    return parts[0] if parts else "(root)"


def _module_order(rows: Sequence[Row]) -> list[str]:
    """Modules by depth (first seen), modules never run last, in manifest order."""
    first: dict[str, tuple[bool, int, int]] = {}
    for i, r in enumerate(rows):
        key = (r.depth is None, r.depth if r.depth is not None else 0, i)
        m = module_of(r)
        if m not in first or key < first[m]:
            first[m] = key
    return sorted(first, key=first.__getitem__)


def group_rows(rows: Sequence[Row]) -> Grouping:
    """Group ``rows`` (a run's manifest rows, any kinds) by block, layer or depth bucket."""
    modules = _module_order(rows)
    block = {m: block_of(m, "act") for m in modules}
    blocks = list(dict.fromkeys(block[m] for m in modules))
    biggest = max((sum(block[m] == b for m in modules) for b in blocks), default=0)
    if 2 <= len(blocks) <= MAX_BLOCKS and 1 < biggest <= len(modules) // 2:
        by = "block"
        groups = [Group(b, b, [m for m in modules if block[m] == b]) for b in blocks]
    elif len(modules) <= MAX_LAYERS:
        by = "layer"
        types = {module_of(r): r.module_type for r in rows if r.module_type}
        groups = [Group(f"{m or '(root)'} {types.get(m, '')}".strip(), m, [m]) for m in modules]
    else:
        by = "depth"
        cuts = np.array_split(np.arange(len(modules)), MAX_BUCKETS)
        groups = []
        for idx in cuts:
            if idx.size:
                ms = [modules[i] for i in idx]
                label = ms[0] if len(ms) == 1 else f"{ms[0]} … {ms[-1]}"
                groups.append(Group(f"depth {idx[0]}-{idx[-1]}: {label}", "", ms))
    return _columns(rows, by, groups)


def _columns(rows: Sequence[Row], by: str, groups: list[Group]) -> Grouping:
    where = {m: g for g, grp in enumerate(groups) for m in grp.modules}
    columns: dict[str, list[list[int]]] = {}
    roles: dict[str, list[str]] = {}
    for kind in ("param", "act", "flow"):
        of = [r for r in rows if r.kind == kind]
        order = sorted(range(len(of)), key=lambda i: (of[i].depth is None, of[i].depth or 0, i))
        cols: list[list[int]] = [[] for _ in groups]
        for c in order:
            cols[where[module_of(of[c])]].append(c)
        columns[kind] = cols
        roles[kind] = [role_in(of[c], groups[where[module_of(of[c])]]) for c in range(len(of))]
    return Grouping(by, groups, columns, roles)


def role_in(row: Row, group: Group) -> str:
    """The row's name inside its group (``attention.self.query.weight`` in ``encoder.layer.3``); in a
    depth bucket, the parameter's attribute (``weight``) or the module type of an act/flow row."""
    if not group.prefix:
        return row.name.rpartition(".")[2] if row.kind == "param" else (row.module_type or "module")
    if row.name.startswith(group.prefix + "."):
        return row.name[len(group.prefix) + 1:]
    if row.name == group.prefix:  # the output of the group's own module
        return "output"
    return row.name


def short_label(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters keeping its distinguishing end: ``…layer.11.output.dense``."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def group_norm(values: np.ndarray, cols: list[list[int]]) -> np.ndarray:
    """[T x groups] L2 norm over each group's columns of [T x rows] per-row L2 norms (NaN rows skipped;
    NaN where a group has nothing recorded at a step): the norm of the group's concatenated tensor."""
    out = np.full((values.shape[0], len(cols)), np.nan, np.float64)
    for g, c in enumerate(cols):
        if c:
            v = values[:, c].astype(np.float64)
            seen = ~np.isnan(v).all(axis=1)
            with np.errstate(over="ignore", invalid="ignore"):
                s = np.sqrt(np.nansum(np.square(v), axis=1))
            bad = (~np.isfinite(v) & ~np.isnan(v)).any(axis=1)  # an Inf stays Inf
            s[bad] = np.inf
            s[~seen] = np.nan
            out[:, g] = s
    return out


def group_median(values: np.ndarray, cols: list[list[int]]) -> np.ndarray:
    """[T x groups] median over each group's columns (NaN ignored; NaN where nothing was recorded).
    Steps with nothing recorded are skipped before nanmedian (no warning: this runs on the writer
    thread, where a warnings filter of another thread would not hold)."""
    out = np.full((values.shape[0], len(cols)), np.nan, np.float64)
    for g, c in enumerate(cols):
        if c:
            v = values[:, c].astype(np.float64)
            some = ~np.isnan(v).all(axis=1)
            if some.any():
                out[some, g] = np.nanmedian(v[some], axis=1)
    return out
