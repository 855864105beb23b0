"""Eager torch mirror of the fused clip-norm kernels, and the chunk layout both share.

The algorithm (the kernels in ``clip_norm.py`` run the same steps on the GPU):

1. **Layout** (host, cached): gradients are grouped by dtype; each tensor is cut into chunks of
   ``chunk`` elements; a chunk table holds (tensor index in its group, element offset). The chunks of
   one tensor are consecutive in the global chunk numbering, so ``seg_lo[t]:seg_hi[t]`` are its chunks.
2. **Partials** (read-only pass): per chunk, in fp32, the sum of squares ``Σ x²``, ``max |x|`` (NaN
   ignored: a NaN shows up as a NaN sum of squares), the non-finite count, and ``Σ |x|^p`` for a
   general p-norm. No atomics: every chunk writes its own slot, so the result is deterministic.
3. **Finalize**: per tensor ``‖g_t‖_p`` from its chunks, the global norm ``‖(‖g_t‖_p)_t‖_p``, the
   clip coefficient ``min(max_norm / (norm + 1e-6), 1)`` (torch's rule; NaN stays NaN), a non-finite
   flag and ``grad_scale = 1 / coef`` for a fused optimizer step. fp32 (also for bf16 grads), fp64 when
   a gradient is fp64. p = 0 is torch's nonzero count, p < 0 its ``(Σ|x|^p)^(1/p)``.
4. **Scale**: ``g *= coef``, skipped when ``coef >= 1``.

This mirror is the readable reference for the kernels (tests compare the two); it is not gradscope's
CPU fast path. On CPU ``gradscope.clip.cpu`` is faster: torch's ``_foreach_norm`` read pass alone
beats this mirror's per-chunk ``torch.dot`` + ``aminmax`` (see benchmarks/README.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

CPU_CHUNK = 1 << 18  # 1 MiB of fp32: two chunks fit one core's L2 (the default chunk of this mirror)
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6)
_CACHE_SIZE = 8


@dataclass
class Group:
    """The tensors of one dtype: local chunk table and where its chunks start globally."""

    dtype: torch.dtype
    index: list[int]  # positions of this group's tensors in the gradient list
    numels: Tensor  # int64 [T_g]
    chunk_tid: Tensor  # int32 [C_g], index into ``index``
    chunk_off: Tensor  # int64 [C_g], first element of the chunk
    chunk_base: int  # global number of the group's first chunk
    n_chunks: int


@dataclass
class Layout:
    """Chunk layout of a gradient list; depends on shapes, dtypes and device only."""

    chunk: int
    device: torch.device
    groups: list[Group]
    seg_lo: Tensor  # int64 [T], first global chunk of tensor t (original order)
    seg_hi: Tensor  # int64 [T], one past its last chunk
    owner: Tensor  # int64 [C], original tensor index of each global chunk
    n_tensors: int
    n_chunks: int
    seg_lo_host: list[int]


def layout_key(tensors: Sequence[Tensor], chunk: int) -> tuple:
    """What a layout depends on: chunk size, device, and (numel, dtype) of every tensor."""
    dev = tensors[0].device if tensors else None
    return (chunk, dev, tuple((t.numel(), t.dtype) for t in tensors))


def build_layout(tensors: Sequence[Tensor], chunk: int) -> Layout:
    """Group by dtype and cut every tensor into ``chunk``-element chunks (host work, done once)."""
    device = tensors[0].device if tensors else torch.device("cpu")
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    groups, seg_lo, seg_hi, owner = [], [0] * len(tensors), [0] * len(tensors), []
    base = 0
    for dtype, index in by_dtype.items():
        tids, offs = [], []
        for local, i in enumerate(index):
            n_c = math.ceil(tensors[i].numel() / chunk)
            seg_lo[i], seg_hi[i] = base + len(tids), base + len(tids) + n_c
            tids += [local] * n_c
            offs += range(0, n_c * chunk, chunk)
            owner += [i] * n_c
        numels = [tensors[i].numel() for i in index]
        groups.append(
            Group(
                dtype,
                index,
                torch.tensor(numels, dtype=torch.int64).to(device),
                torch.tensor(tids, dtype=torch.int32).to(device),
                torch.tensor(offs, dtype=torch.int64).to(device),
                base,
                len(tids),
            )
        )
        base += len(tids)

    def dev(x: list[int]) -> Tensor:
        return torch.tensor(x, dtype=torch.int64).to(device)

    return Layout(chunk, device, groups, dev(seg_lo), dev(seg_hi), dev(owner), len(tensors), base, seg_lo)


_LAYOUTS: OrderedDict[tuple, Layout] = OrderedDict()


def layout_for(tensors: Sequence[Tensor], chunk: int) -> Layout:
    """The cached layout of ``tensors`` (a small LRU keyed by shapes/dtypes), built on a miss."""
    key = layout_key(tensors, chunk)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _LAYOUTS[key] = build_layout(tensors, chunk)
        if len(_LAYOUTS) > _CACHE_SIZE:
            _LAYOUTS.popitem(last=False)
    else:
        _LAYOUTS.move_to_end(key)
    return layout


def _chunk_partials(v: Tensor, p: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Σx², max|x|, non-finite count, Σ|x|^p) of one chunk, fp32 0-d tensors."""
    vf = v if v.dtype in (torch.float32, torch.float64) else v.float()
    sq = torch.dot(vf, vf)
    lo, hi = torch.aminmax(vf)
    mx = torch.maximum(-lo, hi)
    if vf.device.type == "cpu":
        # CPU only: the branch reads a value without a device sync. Finite Σx² means all finite.
        nf = vf.new_zeros(()) if math.isfinite(sq) else (~torch.isfinite(vf)).sum().float()
    else:
        nf = (~torch.isfinite(vf)).sum().float()
    return sq, mx, nf, _power_sum(vf, p, sq, mx)


def _power_sum(vf: Tensor, p: float, sq: Tensor, mx: Tensor) -> Tensor:
    """``Σ|x|^p`` (``Σx²`` for p = 2, max for p = inf) or, for p = 0, the nonzero count (NaN counts)."""
    if p == 2.0:
        return sq
    if math.isinf(p):
        return mx
    if p == 0.0:
        return (vf != 0).sum().to(sq.dtype)
    return vf.abs().pow(p).sum()


def _small_partials(views: list[Tensor], p: float) -> list[tuple[Tensor, ...]]:
    """Partials of whole tensors that fit one chunk: a grouped ``_foreach_norm`` and ``aminmax``.

    (The CPU ``_foreach_norm(inf)`` is ~10x slower than ``aminmax``, hence not used for max |x|.)
    """
    wide = views[0].dtype in (torch.float32, torch.float64)
    kw = {} if wide else {"dtype": torch.float32}
    sq = torch.stack(torch._foreach_norm(views, 2.0, **kw)).square()
    lo, hi = zip(*[torch.aminmax(v) for v in views], strict=True)
    mx = torch.maximum(-torch.stack(lo), torch.stack(hi)).to(sq.dtype)
    if math.isinf(p):
        pw = mx
    elif p == 2.0:
        pw = sq
    elif p == 0.0:
        pw = torch.stack([(v != 0).sum() for v in views]).to(sq.dtype)
    else:
        pw = torch.stack([v.to(sq.dtype).abs().pow(p).sum() for v in views])
    if sq.device.type == "cpu" and bool(torch.isfinite(sq).all()):  # CPU: no sync; all finite
        nf = torch.zeros_like(sq)
    else:
        nf = torch.stack([(~torch.isfinite(v)).sum().float() for v in views])
    return list(zip(sq.unbind(), mx.unbind(), nf.unbind(), pw.unbind(), strict=True))


def partials(tensors: Sequence[Tensor], layout: Layout, p: float = 2.0) -> tuple[Tensor, ...]:
    """Per-chunk (Σx², max|x|, non-finite, Σ|x|^p) as four fp32 [C] vectors: the norm kernel's output.

    A tensor that fits one chunk is one chunk: those are done together per dtype (grouped foreach);
    larger tensors chunk by chunk, each chunk read from memory once and then from cache.
    """
    if not layout.n_chunks:
        empty = torch.zeros(0, dtype=acc_dtype(tensors), device=layout.device)
        return empty, empty, empty, empty
    rows: list = [None] * layout.n_chunks
    for group in layout.groups:
        small, small_at = [], []
        for i in group.index:
            flat = tensors[i].detach().reshape(-1)
            at = layout.seg_lo_host[i]
            if 0 < flat.numel() <= layout.chunk:
                small.append(flat)
                small_at.append(at)
                continue
            for k, s in enumerate(range(0, flat.numel(), layout.chunk)):
                rows[at + k] = _chunk_partials(flat[s : s + layout.chunk], p)
        if small:
            for at, row in zip(small_at, _small_partials(small, p), strict=True):
                rows[at] = row
    acc = acc_dtype(tensors)
    return tuple(torch.stack([x.to(acc) for x in col]) for col in zip(*rows, strict=True))


def acc_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """fp64 when any tensor is fp64 (torch computes its norm in fp64), else fp32."""
    return torch.float64 if any(t.dtype is torch.float64 for t in tensors) else torch.float32


@dataclass
class Finalized:
    """Finalize output, device tensors (fp32; fp64 when a gradient is fp64): per-tensor [T] vectors and
    0-d scalars.

    ``maxabs`` is None where a path was asked not to measure it (``gradscope.clip.cpu``, stats="norm").
    ``plan`` is the fused kernel's cached plan, when the kernel measured (reused by its scale pass).
    """

    norm: Tensor
    maxabs: Tensor | None
    nonfinite: Tensor
    total: Tensor
    coef: Tensor
    found_inf: Tensor
    grad_scale: Tensor
    plan: object | None = None


def clip_coef(total: Tensor, max_norm: float | Tensor) -> Tensor:
    """``min(max_norm / (total + 1e-6), 1)`` as torch computes it: a NaN total gives a NaN coefficient.

    (torch's ``float / tensor`` is ``tensor.reciprocal() * float``: the same ops, in place here.)
    """
    if isinstance(max_norm, Tensor):
        return torch.clamp(max_norm / (total + CLIP_EPS), max=1.0)
    return (total + CLIP_EPS).reciprocal_().mul_(max_norm).clamp_(max=1.0)


def finalize(parts: Sequence[Tensor], layout: Layout, p: float, max_norm: float) -> Finalized:
    """Reduce chunk partials to per-tensor and global norms, coefficient and non-finite flag."""
    sq, mx, nf, pw = parts
    t, dev, f32 = layout.n_tensors, layout.device, sq.dtype
    per_sq = torch.zeros(t, dtype=f32, device=dev).index_add_(0, layout.owner, sq)
    per_mx = torch.zeros(t, dtype=f32, device=dev).scatter_reduce_(0, layout.owner, mx, "amax")
    per_nf = torch.zeros(t, dtype=f32, device=dev).index_add_(0, layout.owner, nf)
    per_pw = torch.zeros(t, dtype=f32, device=dev).index_add_(0, layout.owner, pw)
    per_mx = torch.where(per_sq.isnan(), torch.nan, per_mx)  # NaN anywhere in g_t gives NaN max
    if p == 2.0:
        norm, total = per_sq.sqrt(), per_sq.sum().sqrt()
    elif math.isinf(p):
        norm = per_mx
        total = per_mx.amax() if t else torch.zeros((), dtype=f32, device=dev)
    elif p == 0.0:  # torch: per tensor the nonzero count; globally the number of tensors with one
        norm, total = per_pw, (per_pw != 0).sum().to(f32)
    else:
        norm, total = per_pw.pow(1.0 / p), per_pw.sum().pow(1.0 / p)
    coef = clip_coef(total, max_norm)
    found = (~torch.isfinite(total)).to(f32)
    return Finalized(norm, per_mx, per_nf, total, coef, found, 1.0 / coef)


def scale_(tensors: Sequence[Tensor], coef: Tensor) -> None:
    """``g *= coef`` for every tensor; on CPU skipped when ``coef >= 1`` (NaN still multiplies, as torch)."""
    if not tensors:
        return
    if coef.is_cpu and coef.item() >= 1.0:  # CPU: reading the value is no device sync
        return
    d0 = tensors[0].dtype
    if all(g.dtype is d0 and g.device == coef.device for g in tensors):  # the common case: one group
        torch._foreach_mul_(tensors, coef)
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in tensors:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        torch._foreach_mul_(group, coef.to(group[0].device))


def clip_norm_(
    tensors: Sequence[Tensor], max_norm: float, p: float = 2.0, chunk: int = CPU_CHUNK, fold: bool = False
) -> Finalized:
    """The whole algorithm: layout, partials, finalize, and the scale pass unless ``fold``."""
    layout = layout_for(tensors, chunk)
    out = finalize(partials(tensors, layout, p), layout, float(p), max_norm)
    if not fold:
        scale_(tensors, out.coef)
    return out
