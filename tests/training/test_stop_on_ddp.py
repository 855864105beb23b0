"""stop_on under DDP (gloo, two processes): every rank stops at the same step, none hangs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import _init, make, spawn
from torch import nn

import gradscope

STEPS = 12
NAN_STEP = 4
FLUSH = 2


def _stop_worker(rank: int, init_file: str, log_dir: str, nan_rank: int) -> None:
    _init(rank, init_file)
    try:
        model = nn.parallel.DistributedDataParallel(make())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(3)
        out: dict = {"rank": rank, "completed": 0, "error": None}
        try:
            with gradscope.watch(model, opt, log_dir=log_dir, flush_every=FLUSH, tensorboard=False,
                                 stop_on="error") as scope:
                for i in range(STEPS):
                    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
                    xs = x.chunk(2)[rank].clone()
                    if rank == nan_rank and i == NAN_STEP:
                        xs[0, 0] = float("nan")  # only this rank's batch is bad
                    loss = ((model(xs) - y.chunk(2)[rank]) ** 2).mean()
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    scope.log(loss=loss.detach())
                    out["completed"] = i + 1
        except gradscope.HealthError as e:
            out["error"] = {"step": e.step, "layer": e.layer, "phase": e.phase, "origin_step": e.origin_step,
                            "kind": e.finding.kind}
        Path(f"{log_dir}.rank{rank}.json").write_text(json.dumps(out))
        dist.barrier()  # both ranks got here: nobody hangs in a collective
    finally:
        dist.destroy_process_group()


def _results(tmp_path: Path) -> list[dict]:
    found = sorted(tmp_path.rglob("run.rank*.json"))
    return [json.loads(p.read_text()) for p in found[-2:]]


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")


def test_ddp_nan_on_rank1_stops_both_ranks_at_the_same_step(tmp_path):
    run = spawn(_stop_worker, tmp_path, nan_rank=1)
    r0, r1 = _results(tmp_path)
    want = {"step": NAN_STEP + FLUSH, "layer": "module.0", "phase": "forward", "origin_step": NAN_STEP,
            "kind": "nonfinite"}
    assert r0["error"] == want and r1["error"] == want  # rank 1 got rank 0's verdict by broadcast
    assert r0["completed"] == r1["completed"] == NAN_STEP + FLUSH
    assert run.num_steps == NAN_STEP + FLUSH
    (exc,) = [e for e in run.events if e["kind"] == "exception"]
    assert exc["type"] == "HealthError" and exc["finding"]["origin"]["step"] == NAN_STEP


def test_ddp_healthy_run_with_stop_on_runs_to_the_end(tmp_path):
    run = spawn(_stop_worker, tmp_path, nan_rank=-1)
    r0, r1 = _results(tmp_path)
    assert r0 == {"rank": 0, "completed": STEPS, "error": None}
    assert r1 == {"rank": 1, "completed": STEPS, "error": None}
    assert run.num_steps == STEPS
