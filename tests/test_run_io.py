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
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=3, flush_seconds=None) as scope:
        for _ in range(8):
            model(torch.randn(5, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            scope.event("note", value=1)
    assert (run_dir / "merged" / "index.json").is_file()
    shutil.rmtree(run_dir / "merged")  # read the chunks, as after a killed run
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
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=2, flush_seconds=None) as scope:
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


# -- merged/ (compaction at close) --------------------------------------------------------------------


def _record(run_dir, steps=8, flush_every=3, **kw):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw.setdefault("flush_seconds", None)  # chunks by count, as these tests lay them out
    with gradscope.watch(model, opt, log_dir=run_dir, flush_every=flush_every, **kw) as scope:
        for _ in range(steps):
            loss = model(torch.randn(5, 4)).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            scope.log(loss=loss)
    return run_dir


def _same(a, b):
    assert a.steps.tolist() == b.steps.tolist()
    assert sorted(a.metrics) == sorted(b.metrics) and sorted(a.scalars) == sorted(b.scalars)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    for k in a.scalars:
        np.testing.assert_array_equal(a.scalars[k], b.scalars[k])


def test_close_merges_chunks_and_reading_maps_them(run_dir):
    _record(run_dir)
    index = json.loads((run_dir / "merged" / "index.json").read_text())
    assert index["steps"] == 8 and index["chunks_upto"] == 3
    assert len(list((run_dir / "chunks").iterdir())) == 3  # chunks are kept
    merged_run = gradscope.load_run(run_dir)
    assert merged_run.warnings == []
    gn = merged_run.metric("param", "grad_norm")
    assert not gn.flags.writeable and not gn.flags.owndata  # a read-only view of the mapping
    shutil.rmtree(run_dir / "merged")
    _same(merged_run, gradscope.load_run(run_dir))


def test_chunks_newer_than_merged_are_read_after_it(run_dir):
    from gradscope.run.compact import compact_run
    from gradscope.run.writer import RunWriter

    _record(run_dir)
    before = gradscope.load_run(run_dir)
    w = RunWriter(run_dir, compact=False)  # resume: numbering continues after the merged chunks
    t = np.arange(8, 10)
    w.write_chunk({"step": t, "param/grad_norm": np.ones((2, 4), np.float32),
                   "scalar/extra": np.full(2, 7, np.float32)})
    w.close()
    assert (run_dir / "chunks" / "000003.npz").is_file()
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == list(range(10))
    np.testing.assert_array_equal(run.metric("param", "grad_norm")[:8], before.metric("param", "grad_norm"))
    assert (run.metric("param", "grad_norm")[8:] == 1).all()
    assert np.isnan(run.metric("param", "grad_max")[8:]).all() and np.isnan(run.scalars["extra"][:8]).all()
    assert np.isnan(run.scalars["loss"][8:]).all()
    assert compact_run(run_dir) and not compact_run(run_dir)  # a second call has nothing new
    assert len(list((run_dir / "merged").glob("*.npy"))) == len(json.loads(
        (run_dir / "merged" / "index.json").read_text())["arrays"])  # the earlier token's files are gone
    _same(run, gradscope.load_run(run_dir))


@pytest.mark.parametrize("damage", ["index_json", "index_missing_file", "truncated_array", "wrong_width",
                                    "object_dtype", "symlink", "other_run"])
def test_damaged_merged_falls_back_to_chunks(run_dir, tmp_path, damage):
    _record(run_dir)
    shutil.copytree(run_dir, tmp_path / "ref")
    shutil.rmtree(tmp_path / "ref" / "merged")
    ref = gradscope.load_run(tmp_path / "ref")
    index_path = run_dir / "merged" / "index.json"
    index = json.loads(index_path.read_text())
    target = run_dir / "merged" / index["arrays"]["param/grad_norm"]
    if damage == "index_json":
        index_path.write_text('{"format": "gradscope-merged", "vers')
    elif damage == "index_missing_file":
        target.unlink()
    elif damage == "truncated_array":
        target.write_bytes(target.read_bytes()[:-4])
    elif damage == "wrong_width":
        np.save(target, np.zeros((8, 99), np.float32))
    elif damage == "object_dtype":
        np.save(target, np.array([object()] * 8), allow_pickle=True)
    elif damage == "symlink":
        outside = tmp_path / "outside.npy"
        np.save(outside, np.zeros((8, 4), np.float32))
        target.unlink()
        target.symlink_to(outside)
    elif damage == "other_run":
        index["started"] = 1.0
        index_path.write_text(json.dumps(index))
    with pytest.warns(RuntimeWarning, match="reading the chunks instead"):
        run = gradscope.load_run(run_dir)
    assert len(run.warnings) == 1
    _same(run, ref)


def test_killed_compaction_leaves_a_readable_run(run_dir):
    """Arrays written but the index not yet renamed: the files are ignored and later cleaned up."""
    from gradscope.run.compact import compact_run

    _record(run_dir)
    ref = gradscope.load_run(run_dir)
    shutil.rmtree(run_dir / "merged")
    (run_dir / "merged").mkdir()
    (run_dir / "merged" / "000.0123456789ab.npy").write_bytes(b"\x93NUMPY half-written")
    (run_dir / "merged" / ".index.json.tmp99").write_text("{")
    run = gradscope.load_run(run_dir)
    assert run.warnings == []
    _same(run, ref)
    assert compact_run(run_dir)
    assert not (run_dir / "merged" / "000.0123456789ab.npy").exists()
    assert not (run_dir / "merged" / ".index.json.tmp99").exists()
    _same(gradscope.load_run(run_dir), ref)


def test_overwrite_does_not_mix_in_the_old_merged_run(run_dir):
    _record(run_dir, steps=8)
    _record(run_dir, steps=4, overwrite=True)
    run = gradscope.load_run(run_dir)
    assert run.steps.tolist() == [0, 1, 2, 3] and run.warnings == []
    assert json.loads((run_dir / "merged" / "index.json").read_text())["steps"] == 4


def test_rows_added_after_merge_are_padded(run_dir):
    from gradscope.run.writer import RunWriter

    rows = [fmt.Row("a", "param", "Linear", [2], 0)]
    w = RunWriter(run_dir)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    w.write_chunk({"step": np.arange(3), "param/grad_norm": np.ones((3, 1), np.float32)})
    w.close()
    rows.append(fmt.Row("b", "param", "Linear", [2], 1))
    w = RunWriter(run_dir)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    w.write_chunk({"step": np.arange(3, 5), "param/grad_norm": np.full((2, 2), 2, np.float32)})
    w.close()
    for _ in range(2):  # merged and the 2nd chunk, then all merged
        gn = gradscope.load_run(run_dir).metric("param", "grad_norm")
        np.testing.assert_array_equal(gn, [[1, np.nan], [1, np.nan], [1, np.nan], [2, 2], [2, 2]])
        shutil.rmtree(run_dir / "merged", ignore_errors=True)


def test_compressed_and_fortran_chunks_are_read(run_dir):
    from gradscope.run.writer import RunWriter

    rows = [fmt.Row(n, "param", "Linear", [2], i) for i, n in enumerate("abc")]
    w = RunWriter(run_dir, compact=False)
    w.write_manifest(fmt.make_manifest(rows, {}, {}))
    w.close()
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez_compressed(run_dir / "chunks" / "000000.npz", step=np.arange(4, dtype=np.int32),
                        **{"param/grad_norm": a})
    np.savez(run_dir / "chunks" / "000001.npz", step=np.arange(4, 8),
             **{"param/grad_norm": np.asfortranarray(a.astype(">f8")), "scalar/lr": np.ones(4)})
    run = gradscope.load_run(run_dir)
    assert run.warnings == [] and run.steps.tolist() == list(range(8))
    np.testing.assert_array_equal(run.metric("param", "grad_norm"), np.concatenate([a, a]))
    assert run.metric("param", "grad_norm").dtype == np.float32
    np.testing.assert_array_equal(run.scalars["lr"], [np.nan] * 4 + [1] * 4)
