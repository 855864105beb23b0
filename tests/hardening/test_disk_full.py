"""A disk that fills up and recovers: nothing recorded is lost (items 1 and 9 of issue 12).

Each case runs on a real 4 MiB tmpfs filled to the last byte (skipped where mounting is not
permitted) and again with the same fault injected as an OSError(ENOSPC), which always runs.
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from hardening_helpers import fill, tiny_model, train

import gradscope
from gradscope.run import writer as writer_mod
from gradscope.run.writer import RunWriter


class InjectedDisk:
    """Every file write of the writer raises ENOSPC while ``full`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real = writer_mod._atomic_write

        def atomic_write(path, write, mode="wb"):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
            return real(path, write, mode)

        monkeypatch.setattr(writer_mod, "_atomic_write", atomic_write)

    def fill(self) -> None:
        self.full = True

    def free(self) -> None:
        self.full = False


class RealDisk:
    def __init__(self, mnt) -> None:
        self.mnt, self.filler = mnt, None

    def fill(self) -> None:
        self.filler = fill(self.mnt)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    if request.param == "tmpfs":
        return RealDisk(request.getfixturevalue("tmpfs")), request.getfixturevalue("tmpfs") / "run"
    return InjectedDisk(monkeypatch), tmp_path / "run"


def _check(run_dir, ref) -> gradscope.Run:
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == list(range(len(ref)))
    np.testing.assert_allclose(run.metric("param", "grad_norm"), np.array(ref), rtol=1e-5)
    assert np.isfinite(run.scalars["loss"]).all()
    return run


def test_manifest_write_failed_before_first_flush_is_retried(disk):
    """Item 1: the disk is full from the start (manifest and first chunks fail), then recovers."""
    fault, run_dir = disk
    fault.fill()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref: list = []
    with pytest.warns(RuntimeWarning, match="could not write the run"):
        with gradscope.watch(model, opt, log_dir=run_dir, flush_every=5, tensorboard=False) as scope:
            train(model, opt, 10, ref, scope)
            scope.flush(wait=True)
            assert not (run_dir / "manifest.json").exists()
            fault.free()
            train(model, opt, 50, ref, scope)
    run = _check(run_dir, ref)  # 60 of 60 steps
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len([r for r in manifest["rows"] if r["kind"] == "act"]) == 3  # the manifest of the chunks
    assert run.warnings == []


def test_failed_chunks_are_kept_retried_and_merged_at_close(disk):
    """Item 9: the disk fills mid-run and frees again; every step is on disk and merged at close."""
    fault, run_dir = disk
    model = tiny_model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref: list = []
    with pytest.warns(RuntimeWarning, match="could not write the run"):
        with gradscope.watch(model, opt, log_dir=run_dir, flush_every=5, tensorboard=False) as scope:
            train(model, opt, 20, ref, scope)
            scope.flush(wait=True)
            fault.fill()
            train(model, opt, 20, ref, scope)
            scope.flush(wait=True)
            fault.free()
            train(model, opt, 20, ref, scope)
    assert scope.write_errors  # what failed is still reported
    _check(run_dir, ref)
    index = json.loads((run_dir / "merged" / "index.json").read_text())
    assert index["steps"] == 60  # a write error no longer disables the merge at close


def test_unwritten_chunks_are_bounded_with_a_warning(tmp_path, monkeypatch):
    """Item 9: what is kept for a retry is bounded; hitting the bound drops the oldest, with a warning."""
    fault = InjectedDisk(monkeypatch)
    w = RunWriter(tmp_path / "run", max_pending_bytes=3 * (8 * 8 + 8 * 4))
    w.write_manifest(gradscope.run.format.make_manifest([], {}, {}))
    fault.fill()
    with pytest.warns(RuntimeWarning, match="steps dropped"):
        for i in range(5):
            w.write_chunk({"step": np.arange(8 * i, 8 * i + 8), "scalar/loss": np.ones(8, np.float32)})
    assert w.unwritten_steps == 24 and w.dropped_steps == 16
    fault.free()
    w.write_chunk({"step": np.arange(40, 48), "scalar/loss": np.ones(8, np.float32)})
    w.close()
    assert gradscope.load_run(tmp_path / "run").steps.tolist() == list(range(16, 48))
