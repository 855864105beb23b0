"""Run directory: atomic chunks, tolerant reading, clear errors for what is not a run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.run import format as fmt
from gradscope.run.reader import RunError


@pytest.fixture
def recorded(run_dir):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=3) as scope:
        for _ in range(8):
            model(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            scope.event("note", value=1)
    assert (run_dir / "merged" / "index.json").is_file()
    shutil.rmtree(run_dir / "merged")  # read the chunks, as after a killed run (merged: test_merged.py)
    return run_dir


def test_layout_and_no_pickle(recorded):
    assert sorted(p.name for p in (recorded / "chunks").iterdir()) == ["000000.npz", "000001.npz", "000002.npz"]
    manifest = json.loads((recorded / "manifest.json").read_text())
    assert manifest["schema"] == fmt.SCHEMA_VERSION and manifest["format"] == "gradscope-run"
    assert {r["kind"] for r in manifest["rows"]} == {"param", "act", "flow"}
    assert manifest["environment"]["torch"] == torch.__version__
    with np.load(recorded / "chunks" / "000000.npz", allow_pickle=False) as z:
        assert z["step"].tolist() == [0, 1, 2]
        assert z["param/grad_norm"].dtype == np.float32 and z["param/grad_norm"].shape == (3, 4)
    assert not [p for p in recorded.rglob("*") if p.name.startswith(".") and "tmp" in p.name]
    assert len((recorded / "events.jsonl").read_text().splitlines()) == 8


def test_torn_event_line_and_partial_chunk_are_skipped_with_warning(recorded):
    with open(recorded / "events.jsonl", "a") as f:
        f.write('{"step": 9, "kind": "no')  # a torn last line, as a kill mid-write leaves
    last = recorded / "chunks" / "000002.npz"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(RuntimeWarning) as caught:
        run = gradscope.load_run(recorded)
    assert run.steps.tolist() == [0, 1, 2, 3, 4, 5]
    assert len(run.events) == 8 and len(run.warnings) == 2
    assert any("torn" in str(w.message) for w in caught)


def test_pickle_planted_as_chunk_is_not_loaded(recorded, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    np.savez(recorded / "chunks" / "000003.npz", step=np.arange(3),
             **{"param/grad_norm": np.array([Evil()] * 3, dtype=object)})
    (recorded / "chunks" / "000004.npz").write_bytes(pickle.dumps(Evil()))
    with pytest.warns(RuntimeWarning):
        run = gradscope.load_run(recorded)
    assert not marker.exists()
    assert run.num_steps == 8 and len(run.warnings) == 2


def test_chunk_with_wrong_shape_is_skipped(recorded):
    np.savez(recorded / "chunks" / "000003.npz", step=np.arange(3),
             **{"param/grad_norm": np.zeros((2, 4), np.float32)})
    np.savez(recorded / "chunks" / "000004.npz", step=np.arange(3),
             **{"param/grad_norm": np.zeros((3, 99), np.float32)})
    with pytest.warns(RuntimeWarning):
        run = gradscope.load_run(recorded)
    assert run.num_steps == 8 and len(run.warnings) == 2


def test_rows_added_later_are_padded_with_nan(run_dir):
    class Late(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x, use_b):
            return self.b(self.a(x)) if use_b else self.a(x)

    model = Late()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=2) as scope:
        for step in range(5):
            model(torch.randn(2, 3), step >= 3).sum().backward()
            opt.step()
            opt.zero_grad()
    run = gradscope.load_run(run_dir)
    assert [r.name for r in run.rows_of("act")] == ["a", "b"]
    b = run.metric("act", "mean")[:, 1]
    assert np.isnan(b[:3]).all() and np.isfinite(b[3:]).all()
    assert [r.depth for r in run.rows_of("param")] == [0, 0, 1, 1]
    assert scope.write_errors == []


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "not a directory"),
        (lambda p: p.mkdir(), "no manifest.json"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{not json")), "corrupt"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"a": 1}')), "not a gradscope manifest"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text(
            '{"format": "gradscope-run", "schema": 99, "rows": []}')), "schema 99"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text(
            '{"format": "gradscope-run", "schema": 1, "rows": [{"name": 3}]}')), "malformed row"),
    ],
)
def test_not_a_run_gives_a_clear_error(tmp_path, setup, message):
    path = tmp_path / "x"
    setup(path)
    with pytest.raises(RunError, match=message):
        gradscope.load_run(path)


def test_unwritable_log_dir_warns_once_and_training_continues(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="could not write the run"):
        with gradscope.watch(model, opt, log_dir=blocker / "run", flush_every=1) as scope:
            for _ in range(3):
                model(torch.randn(2, 3)).sum().backward()
                opt.step()
                opt.zero_grad()
    assert scope.write_errors
