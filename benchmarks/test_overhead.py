"""Step-time overhead of watching: watched / unwatched on CPU, interleaved A/B, medians.

    pytest benchmarks/test_overhead.py --benchmark-only -s

Two copies of the same model (same weights, same batches) are stepped alternately, one watched and
one not, so drift in machine speed hits both alike. With ``every=N`` the pairs fall on N positions
of the schedule (the recorded step, the step after it, ...): the watched/unwatched ratio has a
median per position, and the reported ratio is the mean of those medians, the cost amortised over
the schedule (for every=1: the median pair ratio). The ratio of the total times of all timed pairs
and the recorded step's own ratio are printed and stored too; ``unwatched`` is an A/A control
(both copies unwatched) that shows this machine's noise. GRADSCOPE_BENCH_STEPS sets the number of
timed pairs (default 15; at least three cycles for every <= 10, one for every=100);
GRADSCOPE_BENCH_THREADS sets torch's intra-op threads (on a shared machine 1 keeps the pairs
steadier). ``close()`` of the watched copy is timed and stored as ``close_s``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradscope

STEPS = int(os.environ.get("GRADSCOPE_BENCH_STEPS", "15"))
WARMUP = 3
if os.environ.get("GRADSCOPE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["GRADSCOPE_BENCH_THREADS"]))


def bert_small() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """transformers BERT, hidden 256, 4 layers, vocab 8000, batch 16 x 128 tokens (random init)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
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


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.tanh(self.lin(x))


def many_tensors() -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """5,000 parameter tensors: 2,500 residual blocks x + 0.1 tanh(Linear(32, 32) x), batch 32
    (the shape of large, MoE and LoRA models: many small tensors, little compute per tensor)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[_Residual(32) for _ in range(2500)])
    x, y = torch.randn(32, 32), torch.randn(32, 32)

    def loss(m: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(m(x), y)

    return model, loss


MODELS = {"bert": bert_small, "mlp": deep_mlp, "lin5k": many_tensors}
CONFIGS = {
    "params": dict(activations=False, flow=False),
    "params+act": dict(activations=True, flow=False),
    "all": dict(activations=True, flow=True),
    "all+tb": dict(activations=True, flow=True, tensorboard=True),
    "all-every10": dict(activations=True, flow=True, every=10),
    "all-every100": dict(activations=True, flow=True, every=100),
}
BASELINES = ("unwatched", "read-once", "read-once-every10", "item-loop", "wandb-gradients", "wandb-all")


def _gradscope_watcher(config: dict):
    def make(model, opt, tmp_path):
        kw = {"tensorboard": False, **config}
        scope = gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=50, **kw)
        return (lambda loss: scope.log(loss=loss)), scope.close

    return make


def _read_once(model, opt, tmp_path, every: int = 1):
    """A lower bound for any exact monitor: each module output, each output gradient and each
    parameter gradient read once (sum, dot, one fused norm), nothing kept, no bookkeeping. With
    ``every=N`` its hooks are attached for one step in N only (registered after the step before it)."""
    sink: list[torch.Tensor] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    params = [p for p in model.parameters() if p.requires_grad]

    def fwd(module, args, out):
        sink.append(out.detach().sum())
        if out.requires_grad:
            out.register_hook(lambda g: sink.append(torch.dot(g.reshape(-1), g.reshape(-1))))

    handles = [m.register_forward_hook(fwd) for m in leaves]
    original = opt.step
    count = [0]

    def step(*args, **kwargs):
        if count[0] % every == 0:
            sink.append(torch._foreach_norm([p.grad for p in params if p.grad is not None])[0])
            sink.clear()
        count[0] += 1
        out = original(*args, **kwargs)
        if every > 1 and count[0] % every == 0:
            handles[:] = [m.register_forward_hook(fwd) for m in leaves]
        elif every > 1 and handles:
            for h in handles:
                h.remove()
            handles.clear()
        return out

    opt.step = step
    return (lambda loss: None), (lambda: [h.remove() for h in handles])


def _item_loop(model, opt, tmp_path):
    """What people write by hand: a per-parameter norm read back every step (one sync each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    log: list[list[float]] = []
    original = opt.step

    def step(*args, **kwargs):
        log.append([p.grad.norm().item() for p in params if p.grad is not None])
        return original(*args, **kwargs)

    opt.step = step
    return (lambda loss: None), (lambda: None)


def _wandb(log: str):
    def make(model, opt, tmp_path):
        wandb = pytest.importorskip("wandb")
        run = wandb.init(project="gradscope-bench", mode="offline", dir=str(tmp_path), reinit=True)
        wandb.watch(model, log=log, log_freq=1)

        def after(loss):
            run.log({"loss": loss.item()})

        def close():
            wandb.unwatch(model)
            run.finish()

        return after, close

    return make


WATCHERS = {**{k: _gradscope_watcher(v) for k, v in CONFIGS.items()},
            "unwatched": lambda model, opt, tmp_path: ((lambda loss: None), (lambda: None)),
            "read-once": _read_once, "item-loop": _item_loop,
            "read-once-every10": lambda model, opt, tmp_path: _read_once(model, opt, tmp_path, every=10),
            "wandb-gradients": _wandb("gradients"), "wandb-all": _wandb("all")}


def _step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, after=None) -> float:
    t0 = time.perf_counter()
    loss = loss_fn(model)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if after is not None:
        after(loss.detach())
    return time.perf_counter() - t0


def interleaved_ratio(make_model, make_watcher, tmp_path, steps: int = STEPS, every: int = 1) -> dict[str, float]:
    import copy

    base, loss_fn = make_model()
    watched = copy.deepcopy(base)
    opt_a = torch.optim.AdamW(base.parameters(), lr=1e-4)
    opt_b = torch.optim.AdamW(watched.parameters(), lr=1e-4)
    after, close = make_watcher(watched, opt_b, tmp_path)
    cycles = max(-(-steps // every), 3 if every <= 10 else 1)
    ta, tb = [], []
    for i in range(WARMUP + cycles * every):  # any `every` consecutive steps hold one recorded step
        a = _step(base, opt_a, loss_fn)
        b = _step(watched, opt_b, loss_fn, after)
        if i >= WARMUP:
            ta.append(a)
            tb.append(b)
    t0 = time.perf_counter()
    close()
    close_s = time.perf_counter() - t0
    # The pair ratio at each position of the schedule (recorded step, first unrecorded one, ...) has
    # its own median over cycles; their mean is the amortised cost. With every=1 this is the median
    # of the pair ratios; medians keep one slow pair from moving the result.
    pairs = [(WARMUP + k) % every for k in range(len(ta))]
    ratios = [b / a for a, b in zip(ta, tb, strict=True)]
    per_position = [statistics.median(r for r, p in zip(ratios, pairs, strict=True) if p == pos)
                    for pos in range(every)]
    return {"unwatched_ms": statistics.median(ta) * 1e3, "watched_ms": statistics.median(tb) * 1e3,
            "ratio": statistics.fmean(per_position), "recorded_step_ratio": per_position[0],
            "ratio_of_totals": sum(tb) / sum(ta), "cycles": cycles, "close_s": close_s}


@pytest.mark.parametrize("config", list(WATCHERS))
@pytest.mark.parametrize("model", list(MODELS))
def test_overhead(benchmark, model, config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    every = CONFIGS.get(config, {}).get("every", 10 if config == "read-once-every10" else 1)
    result = benchmark.pedantic(interleaved_ratio, args=(MODELS[model], WATCHERS[config], tmp_path),
                                kwargs={"every": every}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{model:5s} {config:16s} unwatched {result['unwatched_ms']:8.1f} ms  "
          f"watched {result['watched_ms']:8.1f} ms  ratio {result['ratio']:.3f} "
          f"(of totals {result['ratio_of_totals']:.3f}; recorded step {result['recorded_step_ratio']:.3f}; "
          f"{result['cycles']} cycles; close {result['close_s']:.2f} s)")
