"""Global-norm clipping on CPU: gradscope's torch path (with per-tensor stats) vs torch's foreach clip.

Run: ``pytest benchmarks/test_clip_bench.py --benchmark-only``. Results: benchmarks/CLIP.md.
Grads: BERT-base (199 tensors, ~109.5M fp32 elements) and a small MLP-like set (~0.4M).
"no-clip" steps have max_norm far above the norm (coef = 1: gradscope skips the write pass, torch
multiplies by 1); "clip" steps have max_norm = 1 (coef < 1 every round: both write every grad).
"""

from __future__ import annotations

import math

import pytest
import torch

import gradscope.clip as C


def bert_base_shapes(vocab: int = 30522, h: int = 768, ff: int = 3072, layers: int = 12) -> list[tuple]:
    """Parameter shapes of BERT-base (with pooler): 199 tensors."""
    shapes: list[tuple] = [(vocab, h), (512, h), (2, h), (h,), (h,)]  # embeddings + LayerNorm
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4  # q, k, v, attention output
        shapes += [(h,), (h,)]  # attention LayerNorm
        shapes += [(ff, h), (ff,), (h, ff), (h,)]  # FFN
        shapes += [(h,), (h,)]  # output LayerNorm
    return shapes + [(h, h), (h,)]  # pooler


SMALL = [(256, 784), (256,), (256, 256), (256,), (128, 256), (128,), (10, 128), (10,)] * 2

SETS = {"bert_base": bert_base_shapes(), "small": SMALL}
_PARAMS: dict[str, list[torch.nn.Parameter]] = {}


def params_for(name: str) -> list[torch.nn.Parameter]:
    if name not in _PARAMS:
        g = torch.Generator().manual_seed(0)
        ps = []
        for s in SETS[name]:
            p = torch.nn.Parameter(torch.empty(s))
            p.grad = torch.randn(s, generator=g)
            ps.append(p)
        _PARAMS[name] = ps
    return _PARAMS[name]


def test_bert_shapes():
    shapes = bert_base_shapes()
    assert len(shapes) == 199 and abs(sum(math.prod(s) for s in shapes) / 1e6 - 109.48) < 0.01


@pytest.mark.parametrize("impl", ["torch_foreach", "gradscope_torch"])
@pytest.mark.parametrize("step", ["noclip", "clip"])
@pytest.mark.parametrize("grads", list(SETS))
def test_clip_grad_norm(benchmark, grads, step, impl):
    params = params_for(grads)
    max_norm = 1e30 if step == "noclip" else 1.0
    benchmark.group = f"{grads}-{step}"
    if impl == "torch_foreach":
        fn = lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)  # noqa: E731
    else:
        clipper = C.NormClipper(max_norm, backend="torch")  # returns per-tensor norm, max|g|, non-finite
        fn = lambda: clipper(params)  # noqa: E731
    benchmark.pedantic(fn, rounds=15 if grads == "bert_base" else 200, warmup_rounds=2)
