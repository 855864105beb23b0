"""watch() after accelerator.prepare: a real accelerate loop on CPU with accumulation and clipping.

accelerate's own ``clip_grad_norm_`` returns the pre-clip total norm of the accumulated gradients:
gradscope's recorded global norm must equal it at every optimizer step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

accelerate = pytest.importorskip("accelerate")  # the hf extra

import gradscope  # noqa: E402

ACCUM, CLIP = 2, 0.3


def test_accelerator_loop_records_what_accelerate_clip_returns(tmp_path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True, gradient_accumulation_steps=ACCUM)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.GELU(), torch.nn.Linear(12, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.utils.data.TensorDataset(torch.randn(80, 6), torch.randn(80, 1))
    model, opt, dl = acc.prepare(model, opt, torch.utils.data.DataLoader(data, batch_size=8))
    assert type(opt).__name__ == "AcceleratedOptimizer"
    norms, losses = [], []
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False):
        for x, y in dl:
            with acc.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                losses.append(float(loss.detach()))
                if acc.sync_gradients:
                    norms.append(float(acc.clip_grad_norm_(model.parameters(), CLIP)))
                opt.step()  # a no-op on accumulation micro-batches: accelerate steps on sync only
                opt.zero_grad()
    run = gradscope.load_run(tmp_path / "run")
    assert run.num_steps == len(norms) == 80 // 8 // ACCUM  # every optimizer step, no micro-batch step
    np.testing.assert_allclose(run.scalars["grad_norm"], norms, rtol=1e-5)
    assert max(norms) > CLIP, "clipping never engaged: pre-clip would equal post-clip"
    assert np.isfinite(run.metric("param", "update_ratio")[0]).all()
