"""Host time per fused-clip call without a GPU: the Python side of ``clip_grad_norm_(backend="triton")``.

    TRITON_INTERPRET=1 python benchmarks/host_overhead.py        # BERT-base: 199 tensors

The kernels are replaced by no-op launchers, so what is timed is gradscope's own host work per call
(collecting the grads, finding the cached plan, preparing the launches), not Triton's launch cost or the
device. The gradient tensors are tiny stand-ins with BERT-base's count and dtypes.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def bert_base(n_layers: int = 12) -> list[tuple]:
    s = [(30522, 768), (512, 768), (2, 768), (768,), (768,)]
    for _ in range(n_layers):
        s += [(768, 768), (768,)] * 4 + [(768,), (768,), (3072, 768), (3072,), (768, 3072), (768,), (768,), (768,)]
    return s + [(768, 768), (768,)]


def main(reps: int = 300) -> None:
    from gradscope.kernels import clip_norm as K

    import gradscope.clip as C

    for name in ("_partials_kernel", "_finalize_tensors_kernel", "_finalize_global_kernel", "_scale_kernel"):
        setattr(K, name, _NoLaunch())
    params = []
    for shape in bert_base():
        p = torch.nn.Parameter(torch.empty(shape[-1]))  # small stand-ins: the count and dtypes matter here
        p.grad = torch.randn(shape[-1])
        params.append(p)
    for _ in range(20):
        C.clip_grad_norm_(params, 1.0, backend="triton")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        C.clip_grad_norm_(params, 1.0, backend="triton")
        times.append((time.perf_counter() - t0) * 1e6)
    print(f"{len(params)} tensors: host time per clip_grad_norm_(backend='triton') call, launches excluded: "
          f"median {statistics.median(times):.1f} us, min {min(times):.1f} us ({reps} calls)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
