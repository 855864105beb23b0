"""GPU benchmark: fused Triton clip-norm vs torch's foreach ``clip_grad_norm_`` (run on a CUDA machine).

    python benchmarks/gpu_clip.py            # 125M and 1B shapes, fp32 and bf16

For each case it prints the median time (``triton.testing.do_bench``), the achieved bandwidth
(bytes that must move / time) and the ratio to the bandwidth floor (those bytes / the measured
device-to-device copy bandwidth). Bytes that must move, N = grad bytes:
  no-clip: fused = 1N read (the scale pass exits at once); torch = 1N read (norm) + 2N (mul by 1.0).
  clip:    fused = 1N read + 1N read + 1N write = 3N; torch = the same 3 passes, 3N.
  fold:    fused = 1N read (the scale is folded into a fused AdamW step).
"""

from __future__ import annotations

import math

import torch

import gradscope.clip as C


def gpt_shapes(d: int, layers: int, vocab: int = 50304, ctx: int = 1024) -> list[tuple]:
    """GPT-2 style parameter shapes: 125M with (768, 12), about 1B with (2048, 18)."""
    shapes: list[tuple] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,)]
        shapes += [(4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


CASES = {"125M": gpt_shapes(768, 12), "1B": gpt_shapes(2048, 18)}


def copy_bandwidth(nbytes: int, do_bench) -> float:
    """Device copy bandwidth in bytes/s (read + write counted)."""
    a = torch.empty(nbytes // 4, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms * 1e-3)


def make_params(shapes, dtype) -> list[torch.nn.Parameter]:
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, device="cuda", dtype=dtype))
        p.grad = torch.randn(s, device="cuda", dtype=dtype)
        ps.append(p)
    return ps


def bench_pair(params, max_norm: float, do_bench) -> dict[str, float]:
    """Median ms of torch's foreach clip and the fused clip on the same grads."""
    return {
        "torch": do_bench(lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)),
        "fused": do_bench(lambda: C.clip_grad_norm_(params, max_norm, backend="triton")),
    }


def main() -> None:
    import triton.testing

    do_bench = triton.testing.do_bench  # median of repeated runs, with L2 flushes
    bw = copy_bandwidth(1 << 30, do_bench)
    print(f"device: {torch.cuda.get_device_name()}  copy bandwidth: {bw / 1e9:.0f} GB/s")
    print(f"{'case':<22}{'impl':<10}{'ms':>9}{'GB/s':>9}{'floor ms':>10}{'x floor':>9}{'vs torch':>10}")
    for name, shapes in CASES.items():
        n = sum(math.prod(s) for s in shapes)
        for dtype in (torch.float32, torch.bfloat16):
            params = make_params(shapes, dtype)
            nbytes = n * params[0].element_size()
            for step, max_norm, passes in (("noclip", 1e30, (1, 3)), ("clip", 1.0, (3, 3))):
                times = bench_pair(params, max_norm, do_bench)
                for impl, k in zip(("fused", "torch"), passes, strict=True):
                    ms, moved = times[impl], k * nbytes
                    floor = moved / bw * 1e3
                    label = f"{name} {str(dtype)[6:]} {step}"
                    print(
                        f"{label:<22}{impl:<10}{ms:9.3f}{moved / (ms * 1e-3) / 1e9:9.0f}{floor:10.3f}"
                        f"{ms / floor:9.2f}{times['torch'] / ms:10.2f}"
                    )
            del params
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
