"""Global-norm clipping on CPU: gradscope's torch path (with per-tensor stats) vs torch's foreach clip.

Run: ``pytest benchmarks/test_clip_bench.py --benchmark-only -s``. Results: benchmarks/README.md.
Grads: BERT-base (199 tensors, ~109.5M fp32 elements) and a small MLP-like set (16 tensors, ~0.47M).

* ``noclip`` steps: max_norm = 1e30 (coef = 1: gradscope skips the write pass, torch multiplies by 1).
* ``clip`` steps: max_norm = half the grads' initial norm, and before every round an untimed setup
  multiplies the grads by 2 (exact), so coef is about 0.5 in every round and both write every grad.
  (Without the setup, the first round leaves the norm at max_norm and later rounds do not clip.)
* gradscope runs ``NormClipper(max_norm, backend="torch", stats=...)``: ``norm`` returns per-tensor
  norms and exact non-finite counts, ``full`` also per-tensor max |g|.

``test_clip_grad_norm`` times each implementation on its own (pytest-benchmark table);
``test_interleaved`` alternates them round by round, so a change in machine load hits all alike, and
prints torch time / gradscope time (min and median over rounds): the figures in README.md.
"""

from __future__ import annotations

import math
import statistics
import time

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


IMPLS = ["torch_foreach", "gradscope_norm", "gradscope_full"]
ROUNDS = {"bert_base": 15, "small": 300}


def case(grads: str, step: str, impl: str):
    """(function to time, untimed setup before each round) for one benchmark case."""
    params = params_for(grads)
    gs = [p.grad for p in params]
    if step == "noclip":
        max_norm, setup = 1e30, None
    else:
        max_norm = 0.5 * INITIAL_NORM[grads]

        def setup():
            torch._foreach_mul_(gs, 2.0)  # exact: the norm is back near INITIAL_NORM, coef ~ 0.5

    if impl == "torch_foreach":
        return (lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)), setup
    clipper = C.NormClipper(max_norm, backend="torch", stats=impl.removeprefix("gradscope_"))
    return (lambda: clipper(params)), setup


INITIAL_NORM = {
    name: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params_for(name)])))
    for name in SETS
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("step", ["noclip", "clip"])
@pytest.mark.parametrize("grads", list(SETS))
def test_clip_grad_norm(benchmark, grads, step, impl):
    fn, setup = case(grads, step, impl)
    benchmark.group = f"{grads}-{step}"
    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS[grads], warmup_rounds=2)


def interleaved(grads: str, step: str, rounds: int) -> dict[str, float]:
    """Every round runs each implementation once (setup untimed); min and median per implementation."""
    fns = {impl: case(grads, step, impl) for impl in IMPLS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(rounds + 2):
        for impl, (fn, setup) in fns.items():
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            if r >= 2:  # two warm-up rounds
                times[impl].append(time.perf_counter() - t0)
    out: dict[str, float] = {}
    for impl, ts in times.items():
        out[f"{impl}_min_ms"] = min(ts) * 1e3
        out[f"{impl}_median_ms"] = statistics.median(ts) * 1e3
    for impl in IMPLS[1:]:
        for stat in ("min", "median"):
            out[f"ratio_{impl}_{stat}"] = out[f"torch_foreach_{stat}_ms"] / out[f"{impl}_{stat}_ms"]
    return out


@pytest.mark.parametrize("step", ["noclip", "clip"])
@pytest.mark.parametrize("grads", list(SETS))
def test_interleaved(benchmark, grads, step):
    benchmark.group = "interleaved"
    result = benchmark.pedantic(interleaved, args=(grads, step, ROUNDS[grads]), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    unit, k = ("ms", 1.0) if grads == "bert_base" else ("us", 1e3)
    line = f"\n{grads:9s} {step:6s}"
    for impl in IMPLS:
        line += f"  {impl} {result[impl + '_min_ms'] * k:8.2f}/{result[impl + '_median_ms'] * k:8.2f} {unit}"
    for impl in IMPLS[1:]:
        r_min, r_med = result[f"ratio_{impl}_min"], result[f"ratio_{impl}_median"]
        line += f"  torch/{impl.removeprefix('gradscope_')} {r_min:.2f} (min) {r_med:.2f} (median)"
    print(line)
