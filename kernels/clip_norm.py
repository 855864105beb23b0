"""Fused gradient-norm clipping in Triton: a read-only norm pass, a finalize, and a guarded scale pass.

The algorithm, step by step, is mirrored in eager torch by ``reference.py`` (same chunk layout):

* ``_partials_kernel``: one program per chunk of one tensor, addressed through a cached table of
  int64 base addresses; writes fp32 ``Σ x²``, ``max |x|``, non-finite count and ``Σ |x|^p`` to its
  own slot (no atomics: deterministic).
* ``_finalize_tensors_kernel`` (one program per tensor) and ``_finalize_global_kernel`` (one program):
  per-tensor norms, global norm ``‖g‖_p``, ``coef = min(max_norm / (‖g‖ + 1e-6), 1)``, the non-finite
  flag ``found_inf`` and ``grad_scale = 1 / coef``, all on the device, fp32 even for bf16 grads.
* ``_scale_kernel``: reads ``coef`` from device memory and returns at once when ``coef >= 1``
  (NaN multiplies, as in torch). In fold mode it is not launched: a fused AdamW divides by
  ``grad_scale`` instead (see ``gradscope.clip.fold``).

Nothing here reads a device value on the host. Written for CUDA; under ``TRITON_INTERPRET=1`` it runs
on CPU tensors (the interpreter executes programs one at a time, so it cannot show races).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope._optional import require

from .reference import Finalized, Layout, layout_for

triton = require("triton", "the fused clip kernel")
tl = triton.language

CHUNK = 16384  # elements per norm/scale program
BLOCK = 1024  # elements per inner iteration
BLOCK_C = 256  # partials per finalize iteration
BLOCK_T = 256  # tensors per global-finalize iteration
KIND_L2, KIND_INF, KIND_P = 0, 1, 2

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _partials_kernel(
    addrs, numels, chunk_tid, chunk_off, sq_out, mx_out, nf_out, pw_out, chunk_base, p,
    DTYPE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, GENERAL_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)  # int64: pid * CHUNK overflows int32 past 2**31 elements
    tid = tl.load(chunk_tid + pid)
    start = tl.load(chunk_off + pid)
    n = tl.load(numels + tid)
    base = tl.load(addrs + tid).to(tl.pointer_type(DTYPE))
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    nf = tl.zeros([BLOCK], dtype=tl.float32)
    pw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK).to(tl.int64)
        x = tl.load(base + offs, mask=offs < n, other=0.0).to(tl.float32)
        ax = tl.abs(x)
        isnan = x != x
        acc += x * x
        nf += tl.where(isnan | (ax == float("inf")), 1.0, 0.0)
        mx = tl.maximum(mx, tl.where(isnan, 0.0, ax))  # NaN is carried by Σx², not by max
        if GENERAL_P:
            pw += tl.where(ax > 0.0, tl.exp2(p * tl.log2(tl.where(ax > 0.0, ax, 1.0))), 0.0)
    out = chunk_base + pid
    tl.store(sq_out + out, tl.sum(acc, axis=0))
    tl.store(mx_out + out, tl.max(mx, axis=0))
    tl.store(nf_out + out, tl.sum(nf, axis=0))
    tl.store(pw_out + out, tl.sum(pw, axis=0))


@triton.jit
def _finalize_tensors_kernel(
    sq, mx, nf, pw, seg_lo, seg_hi, norm_out, max_out, nf_out, contrib_out, p,
    KIND: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    lo = tl.load(seg_lo + t)
    hi = tl.load(seg_hi + t)
    a_sq = tl.zeros([BLOCK_C], dtype=tl.float32)
    a_mx = tl.zeros([BLOCK_C], dtype=tl.float32)
    a_nf = tl.zeros([BLOCK_C], dtype=tl.float32)
    a_pw = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s in range(lo, hi, BLOCK_C):
        offs = s + tl.arange(0, BLOCK_C).to(tl.int64)
        m = offs < hi
        a_sq += tl.load(sq + offs, mask=m, other=0.0)
        a_mx = tl.maximum(a_mx, tl.load(mx + offs, mask=m, other=0.0))
        a_nf += tl.load(nf + offs, mask=m, other=0.0)
        a_pw += tl.load(pw + offs, mask=m, other=0.0)
    s_sq = tl.sum(a_sq, axis=0)
    s_mx = tl.where(s_sq != s_sq, float("nan"), tl.max(a_mx, axis=0))
    if KIND == 0:
        norm = tl.sqrt(s_sq)
        contrib = s_sq
    elif KIND == 1:
        norm = s_mx
        contrib = s_mx
    else:
        s_pw = tl.sum(a_pw, axis=0)
        norm = tl.where(s_pw > 0.0, tl.exp2(tl.log2(tl.where(s_pw > 0.0, s_pw, 1.0)) / p), s_pw)
        contrib = s_pw
    tl.store(norm_out + t, norm)
    tl.store(max_out + t, s_mx)
    tl.store(nf_out + t, tl.sum(a_nf, axis=0))
    tl.store(contrib_out + t, contrib)


@triton.jit
def _finalize_global_kernel(
    contrib, n_tensors, out, max_norm, p, KIND: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    acc = tl.zeros([BLOCK_T], dtype=tl.float32)
    n_nan = tl.zeros([BLOCK_T], dtype=tl.float32)
    for s in range(0, n_tensors, BLOCK_T):
        offs = s + tl.arange(0, BLOCK_T)
        c = tl.load(contrib + offs, mask=offs < n_tensors, other=0.0)
        n_nan += tl.where(c != c, 1.0, 0.0)  # tl.maximum may drop NaN: count it instead
        if KIND == 1:
            acc = tl.maximum(acc, c)
        else:
            acc += c
    if KIND == 0:
        total = tl.sqrt(tl.sum(acc, axis=0))
    elif KIND == 1:
        total = tl.max(acc, axis=0)
    else:
        s_pw = tl.sum(acc, axis=0)
        total = tl.where(s_pw > 0.0, tl.exp2(tl.log2(tl.where(s_pw > 0.0, s_pw, 1.0)) / p), s_pw)
    total = tl.where(tl.sum(n_nan, axis=0) > 0.0, float("nan"), total)
    coef = max_norm / (total + 1e-6)
    coef = tl.where(coef > 1.0, 1.0, coef)  # clamp(max=1) keeping NaN, like torch.clamp
    found = tl.where((total != total) | (total == float("inf")), 1.0, 0.0)
    tl.store(out + 0, total)
    tl.store(out + 1, coef)
    tl.store(out + 2, found)
    tl.store(out + 3, 1.0 / coef)


@triton.jit
def _scale_kernel(
    addrs, numels, chunk_tid, chunk_off, coef_ptr,
    DTYPE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    c = tl.load(coef_ptr)
    if (c < 1.0) | (c != c):  # coef >= 1: nothing to write, the program ends here
        pid = tl.program_id(0).to(tl.int64)
        tid = tl.load(chunk_tid + pid)
        start = tl.load(chunk_off + pid)
        n = tl.load(numels + tid)
        base = tl.load(addrs + tid).to(tl.pointer_type(DTYPE))
        for i in range(0, CHUNK, BLOCK):
            offs = start + i + tl.arange(0, BLOCK).to(tl.int64)
            m = offs < n
            x = tl.load(base + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(base + offs, (x * c).to(DTYPE), mask=m)


@dataclass
class _Plan:
    """Device buffers for one layout: address tables (refreshed on storage change) and partials."""

    layout: Layout
    ptrs: tuple[int, ...]
    addrs: list[Tensor]  # int64 [T_g] per group
    parts: Tensor  # fp32 [4, C]


_PLANS: dict[tuple, _Plan] = {}


def _check(grads: Sequence[Tensor]) -> None:
    for g in grads:
        if g.dtype not in _TL_DTYPES:
            raise TypeError(f"the fused clip kernel supports fp32, bf16 and fp16 grads, not {g.dtype}")
        if not g.is_contiguous():
            raise ValueError("the fused clip kernel needs contiguous grads; use backend='torch'")
    if len({g.device for g in grads}) > 1:
        raise ValueError("the fused clip kernel needs all grads on one device; use backend='torch'")


def _addr_table(grads: Sequence[Tensor], index: list[int], device: torch.device) -> Tensor:
    host = torch.tensor([grads[i].data_ptr() for i in index], dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)  # pinned: no stream sync
    return host


def plan_for(grads: Sequence[Tensor], chunk: int = CHUNK) -> _Plan:
    """Cached tables for ``grads``: layout by shapes/dtypes, address tables rebuilt only when a
    gradient's storage moved (a host-side tuple of data_ptrs, compared every call)."""
    layout = layout_for(grads, chunk)
    ptrs = tuple(g.data_ptr() for g in grads)
    key = (id(layout), chunk)
    plan = _PLANS.get(key)
    if plan is None or plan.layout is not layout:
        parts = torch.empty((4, max(layout.n_chunks, 1)), dtype=torch.float32, device=layout.device)
        plan = _PLANS[key] = _Plan(layout, (), [], parts)
        if len(_PLANS) > 8:
            _PLANS.pop(next(iter(_PLANS)))
    if plan.ptrs != ptrs:
        plan.addrs = [_addr_table(grads, grp.index, layout.device) for grp in plan.layout.groups]
        plan.ptrs = ptrs
    return plan


def _kind(p: float) -> int:
    if p == 2.0:
        return KIND_L2
    if math.isinf(p) and p > 0:
        return KIND_INF
    if math.isfinite(p) and p > 0:
        return KIND_P
    raise ValueError(f"the fused clip kernel supports norm_type > 0 or inf, not {p}; use backend='torch'")


def norm_stats(grads: Sequence[Tensor], max_norm: float, p: float = 2.0, chunk: int = CHUNK) -> Finalized:
    """Norm and finalize passes: per-tensor and global norms, coefficient, flags; grads untouched."""
    kind = _kind(float(p))
    _check(grads)
    plan = plan_for(grads, chunk)
    lay, parts = plan.layout, plan.parts
    t, dev = lay.n_tensors, lay.device
    for grp, addrs in zip(lay.groups, plan.addrs, strict=True):
        if grp.n_chunks:
            _partials_kernel[(grp.n_chunks,)](
                addrs, grp.numels, grp.chunk_tid, grp.chunk_off, parts[0], parts[1], parts[2], parts[3],
                grp.chunk_base, float(p),
                DTYPE=_TL_DTYPES[grp.dtype], CHUNK=chunk, BLOCK=min(BLOCK, chunk), GENERAL_P=kind == KIND_P,
            )  # fmt: skip
    out = torch.empty(4 * t + 4, dtype=torch.float32, device=dev)  # the one per-step allocation
    norm, mx, nf, contrib = out[: 4 * t].view(4, t).unbind(0)
    scalars = out[4 * t :]
    if t:
        _finalize_tensors_kernel[(t,)](
            parts[0], parts[1], parts[2], parts[3], lay.seg_lo, lay.seg_hi, norm, mx, nf, contrib, float(p),
            KIND=kind, BLOCK_C=BLOCK_C,
        )  # fmt: skip
    _finalize_global_kernel[(1,)](contrib, t, scalars, float(max_norm), float(p), KIND=kind, BLOCK_T=BLOCK_T)
    return Finalized(norm, mx, nf, scalars[0], scalars[1], scalars[2], scalars[3])


def scale_(grads: Sequence[Tensor], coef: Tensor, chunk: int = CHUNK) -> None:
    """``g *= coef`` in place for every grad; each program exits at once when ``coef >= 1``."""
    if not grads:
        return
    _check(grads)
    plan = plan_for(grads, chunk)
    for grp, addrs in zip(plan.layout.groups, plan.addrs, strict=True):
        if grp.n_chunks:
            _scale_kernel[(grp.n_chunks,)](
                addrs, grp.numels, grp.chunk_tid, grp.chunk_off, coef,
                DTYPE=_TL_DTYPES[grp.dtype], CHUNK=chunk, BLOCK=min(BLOCK, chunk),
            )  # fmt: skip


def clip_norm_(
    grads: Sequence[Tensor], max_norm: float, p: float = 2.0, fold: bool = False, chunk: int = CHUNK
) -> Finalized:
    """Fused clip: norm + finalize, then the scale pass unless ``fold`` (then use ``grad_scale``)."""
    out = norm_stats(grads, max_norm, p, chunk)
    if not fold:
        scale_(grads, out.coef, chunk)
    return out
