"""Step-time overhead of watching: watched / unwatched on CPU, interleaved A/B, medians.

    pytest benchmarks/test_overhead.py --benchmark-only -s

Two copies of the same model (same weights, same batches) are stepped alternately, one watched and
one not, so drift in machine speed hits both alike. The ratio of median step times is printed and
stored in the benchmark's extra_info.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradscope

STEPS = int(__import__("os").environ.get("GRADSCOPE_BENCH_STEPS", "15"))
WARMUP = 3


def bert_small() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """transformers BERT, hidden 256, 4 layers, batch 16 x 128 tokens (random init)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=1024, max_position_embeddings=128, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (16, 128), generator=g)
    labels = torch.randint(0, 2, (16,), generator=g)

    def loss(m: nn.Module) -> torch.Tensor:
        return m(input_ids=ids, labels=labels).loss

    return model, loss


def deep_mlp() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """32 hidden layers of width 512 with ReLU, batch 256."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(32):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))

    def loss(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(x), y)

    return model, loss


MODELS = {"bert": bert_small, "mlp": deep_mlp}
CONFIGS = {
    "params": dict(activations=False, flow=False),
    "params+act": dict(activations=True, flow=False),
    "all": dict(activations=True, flow=True),
    "all-every10": dict(activations=True, flow=True, every=10),
}


def _step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, scope=None) -> float:
    t0 = time.perf_counter()
    loss = loss_fn(model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if scope is not None:
        scope.log(loss=loss)
    return time.perf_counter() - t0


def interleaved_ratio(make, config: dict, tmp_path, steps: int = STEPS) -> dict[str, float]:
    import copy

    base, loss_fn = make()
    watched = copy.deepcopy(base)
    opt_a = torch.optim.AdamW(base.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(watched.parameters(), lr=1e-4)
    scope = gradscope.watch(watched, opt_b, log_dir=tmp_path / "run", flush_every=50, tensorboard=False,
                            **config)
    ta, tb = [], []
    for i in range(WARMUP + steps):
        a = _step(base, opt_a, loss_fn)
        b = _step(watched, opt_b, loss_fn, scope)
        if i >= WARMUP:
            ta.append(a)
            tb.append(b)
    scope.close()
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"unwatched_ms": ma * 1e3, "watched_ms": mb * 1e3, "ratio": mb / ma}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("model", list(MODELS))
def test_overhead(benchmark, model, config, tmp_path):
    result = benchmark.pedantic(interleaved_ratio, args=(MODELS[model], CONFIGS[config], tmp_path),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{model:5s} {config:12s} unwatched {result['unwatched_ms']:8.1f} ms  "
          f"watched {result['watched_ms']:8.1f} ms  ratio {result['ratio']:.3f}")
