"""Independent float64 references for the clip-norm tests (no gradscope code)."""

from __future__ import annotations

import math

import torch

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # compiled on CUDA, else interpreted
F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
TOL = {F32: 1e-5, BF16: 1e-5, F16: 1e-5, F64: 1e-12}  # fp32 (fp64) accumulation of exact inputs
STORE_TOL = {F32: 2e-6, BF16: 8e-3, F16: 1e-3, F64: 1e-12}  # one rounding to the dtype
TORCH_TOL = {F32: 1e-5, BF16: 8e-3, F16: 1e-3, F64: 1e-12}  # torch's norm is in the dtype


def f64_stats(grads: list[torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """Per-tensor p-norms, max |g|, non-finite counts, total norm and clip coefficient in float64."""
    d = [g.detach().double().flatten() for g in grads]
    f64 = torch.float64
    norms = torch.tensor([torch.linalg.vector_norm(x, p).item() if x.numel() else 0.0 for x in d], dtype=f64)
    maxabs = torch.tensor([x.abs().max().item() if x.numel() else 0.0 for x in d], dtype=f64)
    nonfinite = torch.tensor([float((~torch.isfinite(x)).sum()) for x in d], dtype=f64)
    flat = torch.cat(d) if d else torch.zeros(0, dtype=torch.float64)
    total = torch.linalg.vector_norm(flat, p) if flat.numel() else torch.tensor(0.0, dtype=torch.float64)
    return {"norm": norms, "maxabs": maxabs, "nonfinite": nonfinite, "total": total}


def coef64(total: torch.Tensor, max_norm: float) -> float:
    t = float(total)
    return min(max_norm / (t + 1e-6), 1.0) if not math.isnan(t) else math.nan


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0) -> None:
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol, equal_nan=True
    )


def make_grads(sizes, dtype, scale: float = 1.0) -> list[torch.Tensor]:
    """Fresh random (never zero) tensors of the given sizes, on ``DEV``."""
    out = []
    for s in sizes:
        g = torch.randn(s, dtype=torch.float32, device=DEV) * scale
        g = torch.where(g == 0, torch.full_like(g, 0.5), g)
        out.append(g.to(dtype))
    return out
