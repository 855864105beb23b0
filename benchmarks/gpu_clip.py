"""GPU benchmark: fused Triton clip-norm vs torch's foreach ``clip_grad_norm_`` (run on a CUDA machine).

    python benchmarks/gpu_clip.py            # BERT-base (fp32, bf16), LLaMA-7B (bf16) and 5000 small tensors

Rows, for both implementations on the same gradients:

* ``read``: the norm alone (``get_total_norm``), 1N bytes (N = the gradients' bytes);
* ``no-clip``: ``clip_grad_norm_`` with max_norm = 1e30 (coef = 1): fused 1N (its scale programs exit at
  once), torch 3N (it multiplies by 1.0);
* ``clip``: max_norm = 0, so the coefficient is 0 at EVERY call and the scale pass really runs (with
  max_norm = 1 the first call would leave the norm at 1 and the rest would be no-clip steps): 3N both.

``ms`` is the median of ``triton.testing.do_bench`` (``return_mode="median"``, L2 flushed between
runs); ``x floor`` is ms / (bytes / measured read bandwidth), the read-once floor for 1N rows; ``host us``
is the CPU time per call of back-to-back calls (Python + launches; the GPU runs behind). Results go to
stdout and, as JSON, to ``$OUT/gpu_clip.json`` (or ``benchmarks/results/gpu_clip.json``).

Self-test of the script without a GPU (tiny shapes, interpreter, a plain timer; the figures mean nothing):
``GPU_CLIP_SMOKE=1 TRITON_INTERPRET=1 python benchmarks/gpu_clip.py``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

import gradscope.clip as C

SMOKE = os.environ.get("GPU_CLIP_SMOKE") == "1"
DEV = "cpu" if SMOKE else "cuda"


def bert_base() -> list[tuple]:
    s: list[tuple] = [(30522, 768), (512, 768), (2, 768), (768,), (768,)]
    for _ in range(12):
        s += [(768, 768), (768,)] * 4 + [(768,), (768,), (3072, 768), (3072,), (768, 3072), (768,), (768,), (768,)]
    return s + [(768, 768), (768,)]


def llama7b() -> list[tuple]:
    s: list[tuple] = [(32000, 4096)]
    for _ in range(32):
        s += [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008), (4096,), (4096,)]
    return s + [(4096,), (32000, 4096)]


CASES = [("bert-base", bert_base(), torch.float32), ("bert-base", bert_base(), torch.bfloat16),
         ("llama-7b", llama7b(), torch.bfloat16), ("5000x4096", [(4096,)] * 5000, torch.float32)]  # fmt: skip
if SMOKE:
    CASES = [(name, [tuple(max(1, d // 256) for d in s) for s in shapes[:8]], dt) for name, shapes, dt in CASES[:3]]


def sync() -> None:
    if not SMOKE:
        torch.cuda.synchronize()


def smoke_bench(fn, return_mode: str = "median") -> float:
    """``do_bench``'s stand-in for the CPU self-test: median ms of a few calls."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def read_bandwidth(do_bench) -> float:
    """Device read bandwidth in bytes/s: a 4 GiB fp32 sum (reads once, writes one number)."""
    x = torch.randn(1 << (20 if SMOKE else 30), device=DEV)
    ms = do_bench(x.sum, return_mode="median")
    return x.numel() * 4 / (ms * 1e-3)


def make_params(shapes, dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=DEV).manual_seed(0)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(1, device=DEV, dtype=dtype).expand(s))  # no weight memory
        p.grad = torch.randn(s, device=DEV, dtype=torch.float32, generator=gen).to(dtype)
        ps.append(p)
    return ps


def host_us(fn, reps: int = 50) -> float:
    reps = 2 if SMOKE else reps
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t0) / reps * 1e6
    sync()
    return host


def rows_for(params, do_bench) -> list[tuple[str, str, float, float, int]]:
    grads = [p.grad for p in params]
    impls = [
        ("read", "fused", lambda: C.get_total_norm(grads, backend="triton"), 1),
        ("read", "torch", lambda: torch.nn.utils.get_total_norm(grads, foreach=True), 1),
        ("no-clip", "fused", lambda: C.clip_grad_norm_(params, 1e30, backend="triton"), 1),
        ("no-clip", "torch", lambda: torch.nn.utils.clip_grad_norm_(params, 1e30, foreach=True), 3),
        ("clip", "fused", lambda: C.clip_grad_norm_(params, 0.0, backend="triton"), 3),
        ("clip", "torch", lambda: torch.nn.utils.clip_grad_norm_(params, 0.0, foreach=True), 3),
    ]
    out = []
    for step, impl, fn, passes in impls:
        ms = do_bench(fn, return_mode="median")
        out.append((step, impl, ms, host_us(fn), passes))
    # the clip rows clipped: after them every grad is 0 (coef 0), the norm is 0
    assert float(C.get_total_norm(grads, backend="torch")) == 0.0
    return out


def main() -> None:
    import triton.testing

    do_bench = smoke_bench if SMOKE else triton.testing.do_bench
    bw = read_bandwidth(do_bench)
    name = "cpu (smoke test)" if SMOKE else torch.cuda.get_device_name()
    print(f"device: {name}  measured read bandwidth: {bw / 1e9:.0f} GB/s")
    print(f"{'case':<18}{'T':>6}{'GB':>7}  {'step':<8}{'impl':<6}{'ms':>9}{'GB/s':>8}{'x floor':>9}"
          f"{'host us':>9}{'x torch':>9}")
    results = []
    mem = 1 << 40 if SMOKE else torch.cuda.get_device_properties(0).total_memory
    for cname, shapes, dtype in CASES:
        n = sum(math.prod(s) for s in shapes)
        if n * torch.empty((), dtype=dtype).element_size() * 2.5 > mem:
            continue
        params = make_params(shapes, dtype)
        nbytes = n * params[0].grad.element_size()
        rows = rows_for(params, do_bench)
        by = {(s, i): ms for s, i, ms, _, _ in rows}
        for step, impl, ms, host, passes in rows:
            floor = passes * nbytes / bw * 1e3
            vs = by[(step, "torch")] / ms
            label = f"{cname} {str(dtype)[6:]}"
            print(f"{label:<18}{len(shapes):>6}{nbytes / 1e9:>7.2f}  {step:<8}{impl:<6}{ms:9.3f}"
                  f"{passes * nbytes / (ms * 1e-3) / 1e9:8.0f}{ms / floor:9.2f}{host:9.1f}{vs:9.2f}")  # fmt: skip
            results.append({"case": label, "tensors": len(shapes), "bytes": nbytes, "step": step, "impl": impl,
                            "median_ms": ms, "host_us": host, "bytes_model": f"{passes}N",
                            "x_floor": ms / floor, "x_torch": vs})  # fmt: skip
        del params
        if not SMOKE:
            torch.cuda.empty_cache()
    fused_noclip = [r["x_torch"] for r in results if r["step"] == "no-clip" and r["impl"] == "fused"]
    print(f"no-clip speed-up over torch foreach: median {statistics.median(fused_noclip):.2f}x")
    out_dir = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_clip.json").write_text(json.dumps({"device": name, "read_bw": bw, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
