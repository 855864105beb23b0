"""Fuzzing corrupted run directories: load_run raises RunError or returns with warnings; `gradscope
analyze` exits 0/1/2 without a traceback; nothing is unpickled; nothing hangs.

Each example copies a small recorded run (chunks + merged/), applies 1-4 drawn damages and reads it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import gradscope
from gradscope.cli import main
from gradscope.run.reader import RunError, load_run

SRC = str(Path(gradscope.__file__).resolve().parents[1])


class Planted:
    """Unpickling this creates the marker file: the proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "run"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=path, flush_every=3, tensorboard=False) as scope:
        for _ in range(12):
            loss = model(torch.randn(5, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
            scope.event("note", value=1)
    assert (path / "merged" / "index.json").is_file()
    return path


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _giant_npy() -> bytes:
    """A .npy header declaring a 4 PiB float32 array, followed by 16 bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 16


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return buf.getvalue()


def _files(run: Path, where: str) -> list[Path]:
    d = run / where if where else run
    return sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink()) if d.is_dir() else []


def _garble(p: Path, rng: random.Random, junk: bytes) -> None:
    if p.is_symlink():  # an earlier damage linked it to /dev/zero or outside: leave the target alone
        return
    data = bytearray(p.read_bytes())
    if data:
        at = rng.randrange(len(data))
        data[at:at + len(junk) or 1] = junk or bytes([rng.randrange(256)])
    p.write_bytes(bytes(data))


def _truncate(p: Path, rng: random.Random) -> None:
    if p.is_symlink():
        return
    p.write_bytes(p.read_bytes()[: rng.randrange(max(1, p.stat().st_size))])


def _json(p: Path) -> dict | None:
    """A file's JSON object, None when an earlier damage already broke it."""
    try:
        d = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("rows", []), list) else None


def _bad_array(rng: random.Random, marker: Path) -> np.ndarray:
    choice = rng.randrange(7)
    if choice == 0:
        return np.array([Planted(marker)] * 3, dtype=object)
    if choice == 1:
        return np.zeros((rng.randrange(0, 5), rng.randrange(0, 200)), np.float32)
    if choice == 2:
        return np.zeros((3, 4), rng.choice([np.int8, np.bool_, np.complex64, np.float16, ">f8", np.uint64]))
    if choice == 3:
        return np.zeros((3, 4, 2), np.float32)
    if choice == 4:
        return np.zeros((3,), [("a", "<f4"), ("b", "<i4")])
    if choice == 5:
        return np.array(["x", "y", "z"])
    return np.full((3, 4), rng.choice([np.inf, -np.inf, np.nan, 1e38, -0.0]), np.float32)


def damage(run: Path, outside: Path, marker: Path, kind: str, seed: int, junk: bytes) -> None:
    rng = random.Random(seed)
    chunks, merged = _files(run, "chunks"), _files(run, "merged")
    index = run / "merged" / "index.json"
    arrays = [p for p in merged if p.suffix == ".npy"]
    if kind == "manifest_truncate":
        _truncate(run / "manifest.json", rng)
    elif kind == "manifest_garble":
        _garble(run / "manifest.json", rng, junk)
    elif kind == "manifest_rows" and (m := _json(run / "manifest.json")) is not None:
        m["rows"] = m["rows"][: rng.randrange(len(m["rows"]) + 1)] + [
            {"name": "x", "kind": rng.choice(["param", "act", "flow", "nope"]), "shape": [rng.randrange(9)]}
        ] * rng.randrange(3)
        (run / "manifest.json").write_text(json.dumps(m))
    elif kind == "chunk_truncate" and chunks:
        _truncate(rng.choice(chunks), rng)
    elif kind == "chunk_garble" and chunks:
        _garble(rng.choice(chunks), rng, junk)
    elif kind == "chunk_delete" and chunks:
        rng.choice(chunks).unlink()
    elif kind == "chunk_bad_array" and chunks:
        key = rng.choice(["step", "param/grad_norm", "act/mean", "flow/norm", "scalar/loss", "param/bogus"])
        members = {"step": _npy_bytes(np.arange(3)), key: _npy_bytes(_bad_array(rng, marker))}
        rng.choice(chunks).write_bytes(_npz(members))
    elif kind == "chunk_giant" and chunks:
        rng.choice(chunks).write_bytes(_npz({"step": _npy_bytes(np.arange(3)), "param/grad_norm": _giant_npy()}))
    elif kind == "chunk_pickle" and chunks:
        rng.choice(chunks).write_bytes(pickle.dumps(Planted(marker)))
    elif kind == "chunk_symlink" and chunks:
        target = rng.choice(chunks)
        shutil.copy(target, outside / "outside.npz")
        target.unlink()
        target.symlink_to(outside / "outside.npz")
    elif kind == "chunk_fifo" and hasattr(os, "mkfifo") and not os.path.lexists(run / "chunks" / "000077.npz"):
        os.mkfifo(run / "chunks" / "000077.npz")
    elif kind == "junk_file":
        where = rng.choice(["chunks", "merged", ""])
        if not (run / where).is_dir():
            return
        name = rng.choice(["000050.npz", "9.npz", "junk.txt", "000.0123456789ab.npy", "index.json.tmp", "x.npz"])
        if not os.path.lexists(run / where / name):
            (run / where / name).write_bytes(junk)
    elif kind == "events_garble" and (run / "events.jsonl").exists():
        _garble(run / "events.jsonl", rng, junk)
    elif kind == "events_symlink":
        (run / "events.jsonl").unlink(missing_ok=True)
        (run / "events.jsonl").symlink_to(rng.choice([outside / "outside.txt", Path("/dev/zero")]))
    elif kind == "merged_index" and index.exists():
        rng.choice([_truncate, lambda p, r: _garble(p, r, junk)])(index, rng)
    elif kind == "merged_index_values" and (idx := _json(index)) is not None:
        field = rng.choice(["steps", "chunks_upto", "arrays", "started", "version"])
        idx[field] = rng.choice([10**15, -1, 0, 99, None, "x", {"step": "../manifest.json"}, [1]])
        index.write_text(json.dumps(idx))
    elif kind == "merged_array_truncate" and arrays:
        _truncate(rng.choice(arrays), rng)
    elif kind == "merged_array_bad" and arrays:
        rng.choice(arrays).write_bytes(_npy_bytes(_bad_array(rng, marker)))
    elif kind == "merged_array_giant" and arrays:
        rng.choice(arrays).write_bytes(_giant_npy())
    elif kind == "merged_array_symlink" and arrays:
        target = rng.choice(arrays)
        shutil.copy(target, outside / "outside.npy")
        target.unlink()
        target.symlink_to(outside / "outside.npy")
    elif kind == "merged_drop":
        shutil.rmtree(run / "merged", ignore_errors=True)


DAMAGES = ["manifest_truncate", "manifest_garble", "manifest_rows", "chunk_truncate", "chunk_garble",
           "chunk_delete", "chunk_bad_array", "chunk_giant", "chunk_pickle", "chunk_symlink", "chunk_fifo",
           "junk_file", "events_garble", "events_symlink", "merged_index", "merged_index_values",
           "merged_array_truncate", "merged_array_bad", "merged_array_giant", "merged_array_symlink",
           "merged_drop"]

damages = st.lists(st.tuples(st.sampled_from(DAMAGES), st.integers(0, 2**32), st.binary(max_size=24)),
                   min_size=1, max_size=4)


def check_run(path: Path, marker: Path) -> None:
    """The contract: RunError or a Run; the CLI exits 0/1/2 with no traceback; nothing unpickled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run = load_run(path)
        except RunError:
            run = None
    if run is not None:
        n = run.num_steps
        assert run.steps.dtype == np.int64
        assert all(a.shape[0] == n and a.dtype == np.float32 for a in run.metrics.values())
        assert all(a.shape == (n,) for a in run.scalars.values())
    result = CliRunner().invoke(main, ["analyze", str(path), "--format", "json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output + (result.stderr or "")
    assert not marker.exists(), "something was unpickled"


@pytest.mark.timeout(240)
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(keep_merged=st.booleans(), todo=damages)
def test_corrupted_run_dirs(base, keep_merged, todo):
    with tempfile.TemporaryDirectory() as tmp:
        run, outside = Path(tmp) / "run", Path(tmp) / "outside"
        outside.mkdir()
        (outside / "outside.txt").write_text('{"step": 1, "kind": "outside"}\n')
        marker = Path(tmp) / "unpickled"
        shutil.copytree(base, run, symlinks=True)
        if not keep_merged:  # as a killed run leaves it: chunks only
            shutil.rmtree(run / "merged")
        for kind, seed, junk in todo:
            damage(run, outside, marker, kind, seed, junk)
        check_run(run, marker)


@pytest.mark.timeout(120)
def test_planted_pickles_via_subprocess(base, tmp_path):
    """The installed command, end to end: pickles in a chunk and in merged/ are never loaded."""
    run, marker = tmp_path / "run", tmp_path / "unpickled"
    shutil.copytree(base, run)
    index = json.loads((run / "merged" / "index.json").read_text())
    (run / "merged" / index["arrays"]["param/grad_norm"]).write_bytes(
        _npy_bytes(np.array([Planted(marker)] * 12, dtype=object)))
    (run / "chunks" / "000001.npz").write_bytes(pickle.dumps(Planted(marker)))
    (run / "chunks" / "000002.npz").write_bytes(
        _npz({"step": _npy_bytes(np.arange(3)), "param/grad_norm": _npy_bytes(np.array([Planted(marker)] * 3))}))
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "gradscope.cli", "analyze", str(run), "--format", "json"],
                         capture_output=True, text=True, env=env, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "skipped an unreadable chunk" in out.stderr
    assert json.loads(out.stdout)["summary"]["steps"] == 6  # 12 steps less the two 3-step chunks
    assert not marker.exists()
