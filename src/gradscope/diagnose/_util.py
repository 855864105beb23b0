"""Shared numpy helpers for detectors: NaN-aware medians, weight/flow profiles by depth, stretches."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.run.reader import Run

# Module types whose weight gradients are sparse by nature (only looked-up rows get a gradient), so
# their norm says nothing about gradient flow with depth.
SPARSE_TYPES = frozenset({"Embedding", "EmbeddingBag"})
# Recurrent modules: their input, recurrent and bias weights are one layer unrolled over time, not a
# depth stack; vanishing through time is judged on the gradient at the first vs last time step.
RNN_TYPES = frozenset({"RNN", "LSTM", "GRU"})


def nanmedian(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Median along ``axis`` ignoring NaN (NaN where a slice is all NaN); one sort, no warnings.

    np.nanmedian falls back to a Python loop on large inputs; sorting puts NaN last, so the median
    sits at index (n - 1) // 2 and n // 2 of the n finite-or-inf values.
    """
    s = np.sort(a, axis=axis)
    n = np.sum(~np.isnan(s), axis=axis, keepdims=True)
    lo = np.clip((n - 1) // 2, 0, None)
    hi = np.clip(n // 2, 0, None)
    if s.shape[axis] == 0:
        return np.full(np.delete(s.shape, axis), np.nan, dtype=np.float64)
    med = (np.take_along_axis(s, lo, axis) + np.take_along_axis(s, hi, axis)) / 2.0
    med = np.where(n > 0, med, np.nan)
    return np.squeeze(med, axis=axis)


def stretch(steps: np.ndarray, mask: np.ndarray) -> tuple[int, int] | None:
    """[first, last] step where ``mask`` holds, or None."""
    idx = np.flatnonzero(mask)
    return (int(steps[idx[0]]), int(steps[idx[-1]])) if idx.size else None


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(start index, length) of the longest run of True in a 1-D mask; (0, 0) when none."""
    if not mask.any():
        return 0, 0
    m = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    starts, ends = edges[::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k] - starts[k])


def block_reduce(a: np.ndarray, block: int, fn: str = "median") -> np.ndarray:
    """Reduce consecutive blocks of ``block`` rows (the last one padded with NaN) by median or max."""
    t = a.shape[0]
    nb = -(-t // block) if t else 0
    pad = nb * block - t
    if pad:
        a = np.concatenate([a, np.full((pad, *a.shape[1:]), np.nan, dtype=a.dtype)])
    b = a.reshape(nb, block, *a.shape[1:])
    if fn == "max":
        with np.errstate(invalid="ignore"):
            finite = np.where(np.isnan(b), -np.inf, b)
            out = finite.max(axis=1) if nb else finite.sum(axis=1)
        return np.where(np.isneginf(out), np.nan, out)
    return nanmedian(b, axis=1)


_CACHE: dict[tuple[int, str], Any] = {}


@contextmanager
def cached(run: Run) -> Iterator[None]:
    """Within the block, profiles of ``run`` are computed once and shared between detectors."""
    _CACHE[(id(run), "on")] = True
    try:
        yield
    finally:
        for key in [k for k in _CACHE if k[0] == id(run)]:
            del _CACHE[key]


def _memo(fn: Callable[[Run], Any]) -> Callable[[Run], Any]:
    def wrapper(run: Run) -> Any:
        if (id(run), "on") not in _CACHE:
            return fn(run)
        key = (id(run), fn.__name__)
        if key not in _CACHE:
            _CACHE[key] = fn(run)
        return _CACHE[key]

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@dataclass
class Profile:
    """Per-step values of layers ordered by depth: ``values`` [steps x layers], ``names`` per layer,
    ``types`` the module type of each layer (empty when unknown)."""

    names: list[str]
    values: np.ndarray
    types: list[str] = field(default_factory=list)


def role(name: str, loose: bool = False) -> str:
    """The layer's place inside its block: numeric path parts become ``#`` (``enc.layer.3.q.weight``
    -> ``enc.layer.#.q.weight``), so the same layer of every block of a stack shares a role. ``loose``
    also drops digits inside parts (``fc1``, ``fc2`` -> ``fc#``), for hand-numbered layers."""
    parts = name.split(".")
    if loose:
        return ".".join(re.sub(r"\d+", "#", p) for p in parts)
    return ".".join("#" if p.isdigit() else p for p in parts)


def by_role(prof: Profile, min_layers: int) -> list[Profile]:
    """Sub-profiles of like-for-like layers (same role and module type, depth order).

    When roles repeat (a stack of blocks), every repeated role is a group of >= 2 layers, and the
    groups together must hold ``min_layers`` layers; exact roles first, then loose ones. Only a net
    with no repeated role at all is compared as one profile, when it has ``min_layers`` layers.
    """
    for loose in (False, True):
        groups: dict[tuple[str, str], list[int]] = {}
        for k, n in enumerate(prof.names):
            groups.setdefault((role(n, loose), prof.types[k] if prof.types else ""), []).append(k)
        rep = [ks for ks in groups.values() if len(ks) >= 2]
        if rep:
            if sum(map(len, rep)) < min_layers:
                return []
            return [Profile([prof.names[k] for k in ks], prof.values[:, ks],
                            [prof.types[k] for k in ks] if prof.types else []) for ks in rep]
    return [prof] if len(prof.names) >= min_layers else []


def amp_skipped(run: Run) -> np.ndarray:
    """Steps whose optimizer step the AMP GradScaler skipped (scalar ``amp_skipped`` == 1): their
    gradients overflowed under the loss scale, so their norms say nothing about the model."""
    s = run.scalars.get("amp_skipped")
    if s is None:
        return np.zeros(run.num_steps, bool)
    with np.errstate(invalid="ignore"):
        return s >= 0.5


def global_norm(run: Run) -> np.ndarray | None:
    """The global gradient norm as float64, NaN at AMP-skipped steps; None when not recorded."""
    g = run.scalars.get("grad_norm")
    if g is None:
        return None
    return np.where(amp_skipped(run), np.nan, g.astype(np.float64))


@_memo
def used_param_cols(run: Run) -> list[int]:
    """Trainable param columns that received a non-zero gradient at least once."""
    gn = run.metric("param", "grad_norm")
    rows = run.rows_of("param")
    with np.errstate(invalid="ignore"):
        got = np.any(gn > 0, axis=0) if gn.shape[0] else np.zeros(gn.shape[1], bool)
    return [c for c in range(len(rows)) if rows[c].trainable and got[c]]


@_memo
def sampled_steps(run: Run) -> np.ndarray:
    """Step indices where the update ratio was sampled (any parameter has a finite value)."""
    ur = run.metric("param", "update_ratio")
    if ur.shape[1] == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.isfinite(ur).any(axis=1))


@_memo
def weight_profile(run: Run) -> Profile:
    """RMS gradient (norm / sqrt(numel)) of each used trainable weight (>= 2-D, dense) by depth.

    RMS, not the norm: a 2-input first layer has far fewer elements than a hidden layer, and the
    norm would read that as vanishing.
    """
    rows = run.rows_of("param")
    used = set(used_param_cols(run))
    cols = [
        c for c in run.depth_order("param")
        if c in used and len(rows[c].shape) >= 2 and rows[c].module_type not in SPARSE_TYPES
        and rows[c].module_type not in RNN_TYPES
        and rows[c].depth is not None
    ]
    gn = run.metric("param", "grad_norm")
    numel = np.array([max(1, int(np.prod(rows[c].shape))) for c in cols], dtype=np.float64)
    vals = gn[:, cols].astype(np.float64) / np.sqrt(numel) if cols else np.zeros((gn.shape[0], 0))
    vals[amp_skipped(run)] = np.nan  # overflowed under the loss scale: not the model's gradient
    return Profile([rows[c].name for c in cols], vals, [rows[c].module_type for c in cols])


@_memo
def flow_profile(run: Run) -> Profile:
    """Norm of the gradient into each module's output, by depth (modules that ran and got one)."""
    rows = run.rows_of("flow")
    fl = run.metric("flow", "norm")
    with np.errstate(invalid="ignore"):
        got = np.any(fl > 0, axis=0) if fl.shape[0] else np.zeros(fl.shape[1], bool)
    cols = [c for c in run.depth_order("flow") if got[c] and rows[c].depth is not None]
    vals = fl[:, cols].astype(np.float64)
    vals[amp_skipped(run)] = np.nan
    return Profile([rows[c].name for c in cols], vals, [rows[c].module_type for c in cols])


def first_last_ratio(p: Profile) -> np.ndarray:
    """Per step: value of the first layer over the last one (NaN where either is missing or 0/inf)."""
    if len(p.names) < 2:
        return np.full(p.values.shape[0], np.nan)
    first, last = p.values[:, 0], p.values[:, -1]
    ok = np.isfinite(first) & np.isfinite(last) & (last > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, first / np.where(ok, last, 1.0), np.nan)


def log10_safe(a: np.ndarray) -> np.ndarray:
    """log10 of positive finite values, NaN elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(a) & (a > 0), np.log10(np.where(a > 0, a, 1.0)), np.nan)


@dataclass
class Persistent:
    """An activation row whose per-step fraction stayed at or over a threshold (dead or saturated)."""

    col: int
    values: np.ndarray  # the metric's column
    valid: np.ndarray  # steps with a finite, meaningful value
    hit: np.ndarray  # valid steps at or over the threshold
    frac_steps: float
    longest: int
    median: float


def persistent_rows(run: Run, metric: str, cfg: dict[str, float]) -> list[Persistent]:
    """Act rows (depth order) where ``metric`` >= cfg["frac"] on >= cfg["persist"] of the valid steps,
    for a run of at least cfg["min_steps"] (or all valid steps when fewer); non-finite outputs are not
    valid, since NaN outputs say nothing about units."""
    values = run.metric("act", metric)
    nonfinite = run.metric("act", "nonfinite")
    with np.errstate(invalid="ignore"):
        valid_all = ~np.isnan(values) & ~(nonfinite > 0)
        hit_all = valid_all & (values >= cfg["frac"])
    n_all = valid_all.sum(axis=0)
    frac_all = hit_all.sum(axis=0) / np.maximum(n_all, 1)
    out = []
    for c in run.depth_order("act"):
        n = int(n_all[c])
        if n == 0 or frac_all[c] < cfg["persist"]:
            continue
        valid, hit = valid_all[:, c], hit_all[:, c]
        _, longest = longest_run(hit[valid])
        if longest < min(int(cfg["min_steps"]), n):
            continue
        col = values[:, c]
        out.append(Persistent(c, col, valid, hit, float(frac_all[c]), int(longest), float(np.median(col[hit]))))
    return out


@dataclass
class LossTrend:
    """How the logged loss moved: medians of its first and last tenth (at least ``edge`` values
    each), the lowest median of any block in between, and the relative improvement start -> end."""

    n: int
    start: float
    end: float
    best: float
    improvement: float  # (start - end) / |start|
    best_improvement: float  # (start - best) / |start|
    first_step: int
    last_step: int
    late_low: float  # lowest and highest block median over the second half of the losses
    late_high: float


@_memo
def loss_trend(run: Run) -> LossTrend | None:
    """The loss trend of ``run`` (None when fewer than 20 finite loss values were logged)."""
    loss = run.scalars.get("loss")
    if loss is None:
        return None
    loss = loss.astype(np.float64)
    idx = np.flatnonzero(np.isfinite(loss))
    if idx.size < 20:
        return None
    vals = loss[idx]
    edge = max(5, idx.size // 10)
    start, end = float(np.median(vals[:edge])), float(np.median(vals[-edge:]))
    blocks = block_reduce(vals[:, None], edge)[:, 0]
    best = float(np.min(blocks))
    late = blocks[blocks.size // 2:]
    scale = max(abs(start), 1e-12)
    return LossTrend(int(idx.size), start, end, min(best, end), (start - end) / scale,
                     (start - min(best, end)) / scale, int(run.steps[idx[0]]), int(run.steps[idx[-1]]),
                     float(np.min(late)), float(np.max(late)))


def optimizer_types(run: Run) -> list[str]:
    """Class names of the optimizers given to watch() (empty for runs recorded before they were kept)."""
    config = run.manifest.get("config")
    types = config.get("optimizer_types") if isinstance(config, dict) else None
    return [str(t) for t in types] if isinstance(types, list) else []


ADAPTIVE = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "Adafactor",
            "SparseAdam", "Lion", "Sophia")


def adaptive(run: Run) -> bool | None:
    """Whether the optimizer normalises its step by the gradient scale (Adam family); None unknown."""
    types = optimizer_types(run)
    if not types:
        return None
    return any(t in ADAPTIVE or "Adam" in t for t in types)


def clipping(run: Run) -> str | None:
    """How the loop clips gradients, when the run shows it (gradscope.clip's clip_coef, or a global
    norm at optimizer.step() below the backward-end norm: torch's clip_grad_norm_, accelerate's
    clip): a phrase for remedies, or None."""
    coef = run.scalars.get("clip_coef")
    if coef is not None and np.isfinite(coef).any():
        frac = float(np.mean(coef[np.isfinite(coef)] < 1.0))
        return f"the run already clips gradients (clip coefficient < 1 on {frac:.0%} of steps)"
    at_step, g = run.scalars.get("grad_norm_at_step"), run.scalars.get("grad_norm")
    if at_step is not None and g is not None:
        ok = np.isfinite(at_step) & np.isfinite(g) & (g > 0)
        if ok.any():
            cut = at_step[ok] < 0.99 * g[ok]  # the optimizer got smaller gradients than backward made
            if cut.any():
                return (f"the loop clips (or scales) gradients before optimizer.step() (on {cut.mean():.0%} "
                        "of the sampled steps the norm at the step is below the backward norm)")
    return None
