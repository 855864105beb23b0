"""Fused gradient-norm clipping in Triton: a read-only norm pass, a finalize, and a guarded scale pass.

The algorithm, step by step, is mirrored in eager torch by ``reference.py`` (same chunk layout):

* ``_partials_kernel``: one program per chunk of one tensor, addressed through a cached table of
  int64 base addresses; writes ``Σ x²``, ``max |x|``, the non-finite count and ``Σ |x|^p`` (p > 0 or
  p < 0) or the nonzero count (p = 0) to its own slot (no atomics: deterministic). Accumulation is fp32,
  fp64 for fp64 gradients (torch's rule: a norm is computed in its gradient's dtype, halves in fp32).
* ``_finalize_tensors_kernel`` (one program per tensor) and ``_finalize_global_kernel`` (one program):
  per-tensor norms, global norm ``‖g‖_p``, ``coef = min(max_norm / (‖g‖ + 1e-6), 1)``, the non-finite
  flag ``found_inf`` and ``grad_scale = 1 / coef``, all on the device. Roots ``s^(1/p)`` are taken in fp64.
* ``_scale_kernel``: reads ``coef`` from device memory and returns at once when ``coef >= 1``
  (NaN multiplies, as in torch). In fold mode it is not launched: a fused AdamW divides by
  ``grad_scale`` instead (see ``gradscope.clip.fold``).

Fast path: when every tensor of a dtype group starts on a 16-byte boundary (``ALIGNED``) the base
address carries a divisibility hint and whole chunks are read without a mask, so the compiler emits
16-byte vector loads and stores (``ld.global.v4``); the last, partial chunk of a tensor and unaligned
groups take the masked scalar path. Tensors only need dense storage (channels_last is fine): a norm
and a scale do not depend on the element order.

Host side, per call: one walk over the gradients builds a key (addresses, sizes, dtypes) that finds a
cached plan (layout, address tables, partials buffer); everything else is checked only when a plan is
built. Nothing here reads a device value on the host. Written for CUDA; under ``TRITON_INTERPRET=1`` it
runs on CPU tensors (the interpreter executes programs one at a time, so it cannot show races).
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradscope._optional import require

from .reference import Finalized, Layout, build_layout

triton = require("triton", "the fused clip kernel")
tl = triton.language

CHUNK = 16384  # elements per norm/scale program
BLOCK = 1024  # elements per inner iteration
BLOCK_C = 256  # partials per finalize iteration
BLOCK_T = 256  # tensors per global-finalize iteration
KIND_L2, KIND_INF, KIND_P, KIND_ZERO = 0, 1, 2, 3

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
              torch.float64: tl.float64}  # fmt: skip


@triton.jit
def _partials_kernel(
    addrs, numels, chunk_tid, chunk_off, sq_out, mx_out, nf_out, pw_out, chunk_base, p,
    DTYPE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, GENERAL_P: tl.constexpr,
    ZERO_P: tl.constexpr = False, ALIGNED: tl.constexpr = False, ACC: tl.constexpr = tl.float32,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)  # int64: pid * CHUNK overflows int32 past 2**31 elements
    tid = tl.load(chunk_tid + pid)
    start = tl.load(chunk_off + pid)
    n = tl.load(numels + tid)
    base = tl.load(addrs + tid).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        base = tl.multiple_of(base, 16)  # every tensor of the group starts on a 16-byte boundary
        start = tl.multiple_of(start, CHUNK)
    acc = tl.zeros([BLOCK], dtype=ACC)
    mx = tl.zeros([BLOCK], dtype=ACC)
    nf = tl.zeros([BLOCK], dtype=ACC)
    pw = tl.zeros([BLOCK], dtype=ACC)
    lane = tl.arange(0, BLOCK).to(tl.int64)
    if start + CHUNK <= n:  # a whole chunk: a fixed trip count, loads without a mask (vector loads if ALIGNED)
        for i in range(0, CHUNK, BLOCK):
            x = tl.load(base + (start + i + lane)).to(ACC)
            ax = tl.abs(x)
            isnan = x != x
            acc += x * x
            nf += tl.where(isnan | (ax == float("inf")), 1.0, 0.0)
            mx = tl.maximum(mx, tl.where(isnan, 0.0, ax))  # NaN is carried by Σx², not by max
            if GENERAL_P:  # |x|^p: 0 -> 0 (p > 0) or inf (p < 0); NaN stays NaN
                pw += tl.exp2(p * tl.log2(ax))
            if ZERO_P:
                pw += tl.where(x != 0.0, 1.0, 0.0)  # torch's 0-"norm": the nonzero count, NaN counts
    else:  # the tensor's last chunk: only the blocks that hold elements, masked (the same sums)
        for j in range(0, n - start, BLOCK):  # j, not i: the loop variables differ in type (int64 here)
            offs = start + j + lane
            m = offs < n
            x = tl.load(base + offs, mask=m, other=0.0).to(ACC)
            ax = tl.abs(x)
            isnan = x != x
            acc += x * x
            nf += tl.where(isnan | (ax == float("inf")), 1.0, 0.0)
            mx = tl.maximum(mx, tl.where(isnan, 0.0, ax))
            if GENERAL_P:
                pw += tl.where(m, tl.exp2(p * tl.log2(ax)), 0.0)  # masked lanes add 0 (0**p is inf for p < 0)
            if ZERO_P:
                pw += tl.where(x != 0.0, 1.0, 0.0)
    out = chunk_base + pid
    tl.store(sq_out + out, tl.sum(acc, axis=0))
    tl.store(mx_out + out, tl.max(mx, axis=0))
    tl.store(nf_out + out, tl.sum(nf, axis=0))
    tl.store(pw_out + out, tl.sum(pw, axis=0))


@triton.jit
def _finalize_tensors_kernel(
    sq, mx, nf, pw, seg_lo, seg_hi, norm_out, max_out, nf_out, contrib_out, p,
    KIND: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr = tl.float32,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    lo = tl.load(seg_lo + t)
    hi = tl.load(seg_hi + t)
    a_sq = tl.zeros([BLOCK_C], dtype=ACC)
    a_mx = tl.zeros([BLOCK_C], dtype=ACC)
    a_nf = tl.zeros([BLOCK_C], dtype=ACC)
    a_pw = tl.zeros([BLOCK_C], dtype=ACC)
    for s in range(lo, hi, BLOCK_C):
        offs = s + tl.arange(0, BLOCK_C).to(tl.int64)
        m = offs < hi
        a_sq += tl.load(sq + offs, mask=m, other=0.0)
        a_mx = tl.maximum(a_mx, tl.load(mx + offs, mask=m, other=0.0))
        a_nf += tl.load(nf + offs, mask=m, other=0.0)
        a_pw += tl.load(pw + offs, mask=m, other=0.0)
    s_sq = tl.sum(a_sq, axis=0)
    s_mx = tl.where(s_sq != s_sq, float("nan"), tl.max(a_mx, axis=0))
    s_pw = tl.sum(a_pw, axis=0)
    if KIND == 0:
        norm = tl.sqrt(s_sq)
        contrib = s_sq
    elif KIND == 1:
        norm = s_mx
        contrib = s_mx
    elif KIND == 2:
        norm = tl.exp2(tl.log2(s_pw.to(tl.float64)) / p).to(ACC)  # s^(1/p) in fp64: 0 -> 0 or inf
        contrib = s_pw
    else:  # p = 0: the count itself; globally, torch counts the tensors whose count is nonzero
        norm = s_pw
        contrib = tl.where(s_pw != 0.0, 1.0, 0.0).to(ACC)
    tl.store(norm_out + t, norm)
    tl.store(max_out + t, s_mx)
    tl.store(nf_out + t, tl.sum(a_nf, axis=0))
    tl.store(contrib_out + t, contrib)


@triton.jit
def _finalize_global_kernel(
    contrib, n_tensors, out, max_norm, p, KIND: tl.constexpr, BLOCK_T: tl.constexpr,
    ACC: tl.constexpr = tl.float32,
):  # fmt: skip
    acc = tl.zeros([BLOCK_T], dtype=ACC)
    n_nan = tl.zeros([BLOCK_T], dtype=ACC)
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
    elif KIND == 2:
        total = tl.exp2(tl.log2(tl.sum(acc, axis=0).to(tl.float64)) / p).to(ACC)
    else:
        total = tl.sum(acc, axis=0)
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
    DTYPE: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr = False,
):  # fmt: skip
    c = tl.load(coef_ptr)
    if (c < 1.0) | (c != c):  # coef >= 1: nothing to write, the program ends here
        pid = tl.program_id(0).to(tl.int64)
        tid = tl.load(chunk_tid + pid)
        start = tl.load(chunk_off + pid)
        n = tl.load(numels + tid)
        base = tl.load(addrs + tid).to(tl.pointer_type(DTYPE))
        if ALIGNED:
            base = tl.multiple_of(base, 16)
            start = tl.multiple_of(start, CHUNK)
        lane = tl.arange(0, BLOCK).to(tl.int64)
        if start + CHUNK <= n:  # a whole chunk: no mask (vector loads and stores if ALIGNED)
            for i in range(0, CHUNK, BLOCK):
                ptrs = base + (start + i + lane)
                x = tl.load(ptrs)
                tl.store(ptrs, (x.to(c.dtype) * c).to(DTYPE))
        else:
            for j in range(0, n - start, BLOCK):
                offs = start + j + lane
                m = offs < n
                x = tl.load(base + offs, mask=m, other=0.0)
                tl.store(base + offs, (x.to(c.dtype) * c).to(DTYPE), mask=m)


@dataclass
class _Plan:
    """Everything one gradient list needs on the device, built once per key (see ``plan_for``).

    ``addrs``: int64 address table per dtype group; ``parts``: the [4, C] partials buffer; ``aligned``:
    per group, whether every tensor starts on a 16-byte boundary; ``acc``: the accumulation dtype.
    """

    layout: Layout
    ptrs: tuple[int, ...]
    addrs: list[Tensor]
    parts: Tensor
    aligned: list[bool]
    acc: torch.dtype
    device: torch.device
    problem: str | None = None  # why the kernel cannot take this list (then nothing is built)


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
_LAYOUTS: OrderedDict[tuple, Layout] = OrderedDict()
_CACHE_SIZE = 8
_PTR, _NUMEL, _DTYPE = torch.Tensor.data_ptr, torch.Tensor.numel, operator.attrgetter("dtype")


def _dense(g: Tensor) -> bool:
    """Whether ``g`` covers exactly ``numel`` consecutive elements from ``data_ptr`` (any dim order)."""
    if g.is_contiguous():
        return True
    dims = sorted((st, sz) for sz, st in zip(g.shape, g.stride(), strict=True) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def _problem(grads: Sequence[Tensor]) -> str | None:
    """Why the kernel cannot take ``grads`` (with the fix), or None."""
    for g in grads:
        if g.dtype not in _TL_DTYPES:
            return f"the fused clip kernel supports fp32, bf16, fp16 and fp64 grads, not {g.dtype}"
        if not _dense(g):
            return "the fused clip kernel needs dense grads (contiguous or channels_last); use backend='torch'"
    if len({g.device for g in grads}) > 1:
        return "the fused clip kernel needs all grads on one device; use backend='torch'"
    return None


def _addr_table(grads: Sequence[Tensor], index: list[int], device: torch.device) -> Tensor:
    # device="cpu" explicitly: under torch.set_default_device("cuda") torch.tensor(list) would be a CUDA
    # tensor, and pin_memory() of a CUDA tensor raises.
    host = torch.tensor([grads[i].data_ptr() for i in index], dtype=torch.int64, device="cpu")
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)  # pinned: no stream sync
    return host


def _build(grads: Sequence[Tensor], ptrs: tuple[int, ...], chunk: int) -> _Plan:
    device = grads[0].device if grads else torch.device("cpu")
    problem = _problem(grads)
    if problem is not None:
        return _Plan(None, ptrs, [], torch.empty(0), [], torch.float32, device, problem)  # type: ignore[arg-type]
    lkey = (chunk, device, tuple(map(_NUMEL, grads)), tuple(map(_DTYPE, grads)))
    layout = _LAYOUTS.get(lkey)
    if layout is None:  # new shapes: the chunk tables (a new address set alone reuses them)
        with torch.device(device):  # tables on the grads' device, whatever the default device is
            layout = _LAYOUTS[lkey] = build_layout(grads, chunk)
        if len(_LAYOUTS) > _CACHE_SIZE:
            _LAYOUTS.popitem(last=False)
    acc = torch.float64 if any(grp.dtype is torch.float64 for grp in layout.groups) else torch.float32
    parts = torch.empty((4, max(layout.n_chunks, 1)), dtype=acc, device=device)
    addrs = [_addr_table(grads, grp.index, device) for grp in layout.groups]
    aligned = [all(ptrs[i] % 16 == 0 for i in grp.index) for grp in layout.groups]
    return _Plan(layout, ptrs, addrs, parts, aligned, acc, device)


def plan_for(grads: Sequence[Tensor], chunk: int = CHUNK) -> _Plan:
    """The cached plan for ``grads``, found by one walk: (address, numel, dtype) of every tensor.

    A plan is built (layout, address tables, checks) only for a key not seen among the last few; a list
    passed through ``gradscope.clip`` carries its plan, so a clip walks its gradients once.
    """
    cached = getattr(grads, "plan", None)
    if cached is not None and cached[0] == chunk:
        return cached[1]
    ptrs = tuple(map(_PTR, grads))
    key = (chunk, ptrs, tuple(map(_NUMEL, grads)), tuple(map(_DTYPE, grads)))
    plan = _PLANS.get(key)
    if plan is None:
        if chunk & (chunk - 1) or chunk < 16:
            raise ValueError(f"chunk must be a power of two >= 16, got {chunk}")
        plan = _PLANS[key] = _build(grads, ptrs, chunk)
        if len(_PLANS) > _CACHE_SIZE:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    if hasattr(grads, "plan"):
        grads.plan = (chunk, plan)  # type: ignore[union-attr]
    return plan


def _usable(grads: Sequence[Tensor], chunk: int) -> _Plan:
    plan = plan_for(grads, chunk)
    if plan.problem is not None:
        raise (TypeError if "supports" in plan.problem else ValueError)(plan.problem)
    return plan


def _kind(p: float) -> int:
    if p == 2.0:
        return KIND_L2
    if math.isinf(p) and p > 0:
        return KIND_INF
    if p == 0.0:
        return KIND_ZERO
    if math.isfinite(p):
        return KIND_P
    raise ValueError(f"the fused clip kernel supports finite norm types and inf, not {p}; use backend='torch'")


class _on_device:
    """Run launches with ``device`` current (Triton launches on the current CUDA device)."""

    def __init__(self, device: torch.device) -> None:
        self.guard = device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device()
        self.device = device

    def __enter__(self):
        if self.guard:
            self.ctx = torch.cuda.device(self.device)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.guard:
            self.ctx.__exit__(*exc)


def _empty(max_norm: float) -> Finalized:
    zero = torch.zeros(0, dtype=torch.float32)
    total = torch.zeros((), dtype=torch.float32)
    coef = torch.clamp(torch.tensor(float(max_norm)) / (total + 1e-6), max=1.0)
    return Finalized(zero, zero.clone(), zero.clone(), total, coef, torch.zeros(()), 1.0 / coef)


def norm_stats(grads: Sequence[Tensor], max_norm: float, p: float = 2.0, chunk: int = CHUNK) -> Finalized:
    """Norm and finalize passes: per-tensor and global norms, coefficient, flags; grads untouched."""
    kind = _kind(float(p))
    if not grads:
        return _empty(max_norm)
    plan = _usable(grads, chunk)
    lay, parts, acc = plan.layout, plan.parts, _TL_DTYPES[plan.acc]
    t, dev = lay.n_tensors, plan.device
    with _on_device(dev):
        for grp, addrs, aligned in zip(lay.groups, plan.addrs, plan.aligned, strict=True):
            if grp.n_chunks:
                _partials_kernel[(grp.n_chunks,)](
                    addrs, grp.numels, grp.chunk_tid, grp.chunk_off, parts[0], parts[1], parts[2], parts[3],
                    grp.chunk_base, float(p),
                    DTYPE=_TL_DTYPES[grp.dtype], CHUNK=chunk, BLOCK=min(BLOCK, chunk),
                    GENERAL_P=kind == KIND_P, ZERO_P=kind == KIND_ZERO, ALIGNED=aligned, ACC=acc,
                )  # fmt: skip
        out = torch.empty(4 * t + 4, dtype=plan.acc, device=dev)  # the one per-step allocation
        norm, mx, nf, contrib = out[: 4 * t].view(4, t).unbind(0)
        scalars = out[4 * t :]
        _finalize_tensors_kernel[(t,)](
            parts[0], parts[1], parts[2], parts[3], lay.seg_lo, lay.seg_hi, norm, mx, nf, contrib, float(p),
            KIND=kind, BLOCK_C=BLOCK_C, ACC=acc,
        )  # fmt: skip
        _finalize_global_kernel[(1,)](contrib, t, scalars, float(max_norm), float(p), KIND=kind, BLOCK_T=BLOCK_T,
                                      ACC=acc)  # fmt: skip
    result = Finalized(norm, mx, nf, scalars[0], scalars[1], scalars[2], scalars[3])
    if plan.acc is torch.float64:  # the kernel's max_norm argument is fp32: take fp64's coefficient in torch
        from .reference import clip_coef

        result.coef = clip_coef(result.total, max_norm)
        result.grad_scale = 1.0 / result.coef
    result.plan = plan  # type: ignore[attr-defined]
    return result


def scale_(grads: Sequence[Tensor], coef: Tensor, chunk: int = CHUNK) -> None:
    """``g *= coef`` in place for every grad; each program exits at once when ``coef >= 1``."""
    if not grads:
        return
    plan = _usable(grads, chunk)
    with _on_device(plan.device):
        for grp, addrs, aligned in zip(plan.layout.groups, plan.addrs, plan.aligned, strict=True):
            if grp.n_chunks:
                _scale_kernel[(grp.n_chunks,)](
                    addrs, grp.numels, grp.chunk_tid, grp.chunk_off, coef,
                    DTYPE=_TL_DTYPES[grp.dtype], CHUNK=chunk, BLOCK=min(BLOCK, chunk), ALIGNED=aligned,
                )  # fmt: skip


def clip_norm_(
    grads: Sequence[Tensor], max_norm: float, p: float = 2.0, fold: bool = False, chunk: int = CHUNK
) -> Finalized:
    """Fused clip: norm + finalize, then the scale pass unless ``fold`` (then use ``grad_scale``)."""
    out = norm_stats(grads, max_norm, p, chunk)
    if not fold:
        scale_(grads, out.coef, chunk)
    return out
