"""DDP and FSDP2 on CPU with gloo, two processes: recorded norms equal the single-process reference."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradscope

STEPS = 4


def make() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for _i in range(STEPS):
        x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
        out.append((x, y))
    return out


def _init(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)


def _ddp_worker(rank: int, init_file: str, log_dir: str, nan_rank: int) -> None:
    _init(rank, init_file)
    try:
        model = nn.parallel.DistributedDataParallel(make())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gradscope.watch(model, opt, log_dir=log_dir, flush_every=2, tensorboard=False):
            for i, (x, y) in enumerate(batches()):
                xs = x.chunk(2)[rank].clone()
                if rank == nan_rank and i == 2:
                    xs[0, 0] = float("nan")
                ((model(xs) - y.chunk(2)[rank]) ** 2).mean().backward()
                opt.step()
                opt.zero_grad()
        dist.barrier()  # leave together: tearing gloo down while the peer is mid-collective can abort
    finally:
        dist.destroy_process_group()


def _fsdp_worker(rank: int, init_file: str, log_dir: str, nan_rank: int) -> None:
    from torch.distributed.fsdp import fully_shard

    _init(rank, init_file)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2,))
        model = make()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        clipped = []
        with gradscope.watch(model, opt, log_dir=log_dir, flush_every=2, tensorboard=False) as scope:
            for x, y in batches():
                ((model(x.chunk(2)[rank]) - y.chunk(2)[rank]) ** 2).mean().backward()
                total = gradscope.clip.clip_grad_norm_(model.parameters(), 1e9)
                clipped.append(float(total.full_tensor() if hasattr(total, "full_tensor") else total))
                opt.step()
                opt.zero_grad()
                scope.log(clip_total=clipped[-1])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    per, total, weights = [], [], []
    for x, y in batches():
        # DDP averages the ranks' gradients of their half-batch means = the full-batch mean gradient
        ((model(x) - y) ** 2).mean().backward()
        per.append([p.grad.double().norm().item() for p in model.parameters()])
        total.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        opt.step()
        opt.zero_grad()
        weights.append([p.detach().double().norm().item() for p in model.parameters()])
    return np.array(per), np.array(total), np.array(weights)


def spawn(worker, tmp_path, nan_rank: int = -1, retry: bool = True):
    tmp_path.mkdir(exist_ok=True)
    fd, init_file = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    os.unlink(init_file)
    try:
        mp.spawn(worker, args=(init_file, str(tmp_path / "run"), nan_rank), nprocs=2, join=True)
    except mp.ProcessExitedException as e:
        # gloo's teardown has aborted a process now and then ("terminate called without an active
        # exception", SIGABRT) after the work was done; a worker that raised is not retried.
        if e.signal_name != "SIGABRT" or not retry:
            raise
        return spawn(worker, tmp_path / "retry", nan_rank, retry=False)
    return gradscope.load_run(tmp_path / "run")


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")


def test_ddp_norms_equal_single_process_and_rank0_writes(tmp_path):
    run = spawn(_ddp_worker, tmp_path)
    per, total, _ = reference()
    assert run.num_steps == STEPS
    np.testing.assert_allclose(run.metric("param", "grad_norm"), per, rtol=1e-5)
    np.testing.assert_allclose(run.scalars["grad_norm"], total, rtol=1e-5)
    assert [r.name for r in run.rows_of("param")][0] == "module.0.weight"
    assert run.manifest["config"]["world_size"] == 2
    assert len(list((tmp_path / "run" / "chunks").iterdir())) == 2  # one writer, not two


def test_ddp_nan_on_one_rank_is_reported_by_rank0(tmp_path):
    run = spawn(_ddp_worker, tmp_path, nan_rank=1)
    assert not np.isfinite(run.scalars["grad_norm"][2])
    assert run.metric("param", "grad_nonfinite")[2].max() == 1
    first_act = run.depth_order("act")[0]
    assert run.metric("act", "nonfinite")[2, first_act] == 1  # only rank 1 saw it: summed at flush
    assert run.metric("act", "nonfinite")[1, first_act] == 0


def test_fsdp2_sharded_norms_equal_unsharded_reference(tmp_path):
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 fully_shard")
    run = spawn(_fsdp_worker, tmp_path)
    per, total, weights = reference()
    np.testing.assert_allclose(run.metric("param", "grad_norm"), per, rtol=1e-5)
    np.testing.assert_allclose(run.scalars["grad_norm"], total, rtol=1e-5)
    np.testing.assert_allclose(run.scalars["clip_total"], total, rtol=1e-5)  # gradscope's clip on shards
    np.testing.assert_allclose(run.metric("param", "weight_norm")[0], weights[0], rtol=1e-5)
