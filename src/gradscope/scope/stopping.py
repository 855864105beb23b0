"""The training thread's side of live diagnosis: ``watch(..., on_finding=, stop_on=)``.

The detectors run on the writer thread (``gradscope.diagnose.live``, imported only when live
diagnosis is on). With ``stop_on`` set, each flush waits for the writer's NaN/Inf check of the steps
it hands over (O(steps flushed), plus one diagnosis when it fires), so a NaN is stopped within one
flush window; findings of the periodic diagnosis stop the run at the next call instead. Under DDP,
rank 0 broadcasts its verdict at each flush and every rank stops at the optimizer step after it: the
same step everywhere, with no rank left waiting in a collective.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradscope.scope import distributed

VERDICT_TIMEOUT = 60.0  # seconds a flush waits for the writer's verdict (a stuck disk must not hang)


def check_live(live: bool, on_finding: Any, stop_on: Any) -> Any:
    """Validate the live-diagnosis arguments before watch() touches anything; the stop rule or None."""
    if not isinstance(live, bool):
        raise TypeError(f"watch(live={live!r}): must be True or False")
    if on_finding is not None and not callable(on_finding):
        raise TypeError(f"watch(on_finding=...) takes a function of one Finding, got {type(on_finding).__name__}")
    if not live and (on_finding is not None or stop_on is not None):
        raise ValueError("watch(live=False) turns live diagnosis off, so on_finding and stop_on would never "
                         "fire: drop them or keep live=True")
    if stop_on is None:
        return None
    from gradscope.diagnose.live import stop_rule

    return stop_rule(stop_on)


class Stopper:
    """Waits for verdicts at flushes and tells the Scope when to raise HealthError."""

    def __init__(self, live: Any, rule: Callable[[Any], bool] | None, device: torch.device) -> None:
        self.live = live  # the LiveDiagnosis sink on rank 0; None on other ranks or with live=False
        self.rule = rule
        self.ddp = distributed.world_size() > 1
        self.device = device
        self.agreed: Any = None  # under DDP: the finding every rank stops on

    @classmethod
    def make(cls, log_dir: Path, live: bool, on_finding: Any, rule: Any, rank0: bool,
             device: torch.device) -> Stopper:
        sink = None
        if live and rank0:
            from gradscope.diagnose.live import LiveDiagnosis

            sink = LiveDiagnosis(log_dir, on_finding=on_finding, stop_on=rule)
        return cls(sink, rule, device)

    def findings(self) -> list[Any]:
        return self.live.findings if self.live is not None else []

    # -- flush (training thread) -------------------------------------------------------------------
    def chunk_job(self, writer: Any, finish: Callable[[], dict[str, np.ndarray]]
                  ) -> tuple[Callable[[], None], threading.Event | None]:
        """The writer job for one flushed chunk, and the event a stop_on flush waits for."""
        live = self.live
        if self.rule is None or live is None:
            return (lambda: writer.write_chunk(finish())), None
        done = threading.Event()

        def job() -> None:
            try:
                arrays = finish()
                if not live.check(arrays):
                    done.set()  # clean: training goes on while the chunk is written
                writer.write_chunk(arrays)  # a NaN: written, then diagnosed, before the verdict
                live.diagnose_urgent()
            finally:
                done.set()

        return job, done

    def settle(self, done: threading.Event | None, flushed: bool) -> None:
        """After a flush: wait for its verdict (stop_on only); under DDP agree on it across ranks, at
        flushes that handed over steps (every rank records the same steps, so they all get here)."""
        if self.rule is None:
            return
        if done is not None:
            done.wait(VERDICT_TIMEOUT)
        if self.ddp and flushed:
            mine = self.live.stop if self.live is not None else None
            self.agreed = self.agreed or _broadcast_finding(mine, self.device)

    def pending(self, at_optimizer: bool) -> Any:
        """The finding to stop on now, or None. Under DDP only at an optimizer step (every rank gets
        there in step, after the backward's collectives), and only one agreed at a flush."""
        if self.rule is None:
            return None
        if self.ddp:
            return self.agreed if at_optimizer else None
        return self.live.stop if self.live is not None else None

    def error(self, finding: Any, step: int) -> Exception:
        from gradscope.diagnose.live import HealthError

        return HealthError(finding, step)


def _broadcast_finding(finding: Any, device: torch.device) -> Any:
    """Rank 0's finding (or None) on every rank: its JSON as bytes, length first (two broadcasts)."""
    from gradscope.diagnose.live import finding_from_json

    payload = json.dumps(finding.to_json()).encode() if finding is not None else b""
    dev = device if device.type != "meta" else torch.device("cpu")
    n = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
    torch.distributed.broadcast(n, 0)
    size = int(n.item())  # deliberate sync, once per flush and only with stop_on under DDP
    if size == 0:
        return finding
    buf = (torch.tensor(list(payload), dtype=torch.uint8, device=dev) if payload
           else torch.zeros(size, dtype=torch.uint8, device=dev))
    torch.distributed.broadcast(buf, 0)
    if finding is not None:
        return finding
    return finding_from_json(json.loads(bytes(buf.cpu().tolist()).decode()))

