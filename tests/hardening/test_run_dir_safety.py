"""gradscope never deletes or reuses a file it did not write (items 2, 3, 5, 6, 7 of issue 12).

The convention for an existing log_dir (README "The run directory"): a directory holding anything
gradscope writes is left alone and the run goes to log_dir-2, -3, ...; ``overwrite=True`` clears only a
proven gradscope run, and only gradscope's own files in it; a directory being written is claimed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hardening_helpers import child_env, tiny_model, train, tree

import gradscope
from gradscope.cli import main
from gradscope.run.compact import compact_run
from gradscope.run.reader import RunError


def record(log_dir, steps=6, flush_every=2, **kw) -> gradscope.Scope:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=log_dir, flush_every=flush_every, tensorboard=False, **kw) as scope:
        train(model, opt, steps, scope=scope)
    return scope


def plant_web_app(path):
    """A web app's build folder that happens to use gradscope's names."""
    (path / "chunks").mkdir(parents=True)
    (path / "tb").mkdir()
    (path / "merged").mkdir()
    (path / "manifest.json").write_text(json.dumps({"name": "My App", "icons": [], "start_url": "/"}))
    (path / "events.jsonl").write_text('{"click": 1}\n')
    (path / "chunks" / "000000.npz").write_bytes(b"webpack chunk, not a gradscope chunk")
    (path / "chunks" / "vendor.js").write_text("console.log(1)")
    (path / "tb" / "events.out.tfevents.1.host").write_bytes(b"someone else's TensorBoard log")
    (path / "merged" / "000.0123456789ab.npy").write_bytes(b"a user's array")
    (path / "index.html").write_text("<html></html>")


def test_default_never_removes_or_uses_a_users_merged_folder(tmp_path):
    """Item 2: a `merged/` folder (no manifest) in log_dir is left exactly as it was."""
    log_dir = tmp_path / "work"
    (log_dir / "merged").mkdir(parents=True)
    (log_dir / "merged" / "notes.txt").write_text("my notes")
    (log_dir / "merged" / "000.0123456789ab.npy").write_bytes(b"my array")
    before = tree(log_dir)
    scope = record(log_dir)
    assert tree(log_dir) == before
    assert scope.log_dir == tmp_path / "work-2"
    assert gradscope.load_run(scope.log_dir).num_steps == 6


def test_overwrite_refuses_a_directory_that_is_not_a_gradscope_run(tmp_path):
    """Item 3: overwrite=True on a web app's folder (its own manifest.json) raises, deleting nothing."""
    log_dir = tmp_path / "site"
    plant_web_app(log_dir)
    before = tree(log_dir)
    with pytest.raises(FileExistsError, match="did not write"):
        record(log_dir, overwrite=True)
    assert tree(log_dir) == before


def test_overwrite_clears_only_gradscopes_own_files(tmp_path):
    """Item 3: clearing a proven run removes gradscope's files and nothing beside them."""
    log_dir = tmp_path / "run"
    record(log_dir, steps=8)
    (log_dir / "notes.txt").write_text("keep me")
    (log_dir / "chunks" / "README").write_text("keep me too")
    (log_dir / "merged" / "mine.txt").write_text("and me")
    record(log_dir, steps=3, overwrite=True, compact=False)
    assert (log_dir / "notes.txt").read_text() == "keep me"
    assert (log_dir / "chunks" / "README").read_text() == "keep me too"
    assert (log_dir / "merged" / "mine.txt").read_text() == "and me"
    assert not [p for p in (log_dir / "merged").iterdir() if p.name != "mine.txt"]  # no stale merged run
    assert gradscope.load_run(log_dir).steps.tolist() == [0, 1, 2]


def test_a_failed_clear_raises_instead_of_mixing_runs(tmp_path, monkeypatch):
    """Item 3: a chunk of the old run that cannot be removed stops watch() with a clear error."""
    log_dir = tmp_path / "run"
    record(log_dir, steps=15, flush_every=5, compact=False)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # the old run's second chunk is undeletable
        if os.fsdecode(path).endswith("000001.npz"):
            raise PermissionError(errno.EPERM, "Operation not permitted", os.fsdecode(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError, match="could not clear the old run"):
        record(log_dir, steps=10, overwrite=True)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert gradscope.load_run(log_dir).num_steps != 10  # never a mix of old and new steps


HOLD = textwrap.dedent("""
    import sys, time, torch, gradscope
    from torch import nn
    model = nn.Linear(3, 1)
    start = float(sys.argv[2])
    while time.time() < start:
        pass
    try:
        scope = gradscope.watch(model, log_dir=sys.argv[1], tensorboard=False)
    except FileExistsError as exc:
        print("REFUSED", exc, flush=True)
        sys.exit(3)
    print("CLAIMED", flush=True)
    sys.stdin.readline()  # hold the run open until told
    scope.close()
""")


def _hold(log_dir, start: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(log_dir), str(start)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def test_two_watches_on_one_log_dir_the_second_fails_at_once(tmp_path):
    """Item 5: two processes start watch() on one log_dir at the same moment: exactly one claims it."""
    log_dir = tmp_path / "run"
    start = time.time() + 6  # both children are importing torch by then; they start together
    procs = [_hold(log_dir, start) for _ in range(2)]
    first = [p.stdout.readline().split()[0] for p in procs]
    assert sorted(first) == ["CLAIMED", "REFUSED"], [p.stderr.read() for p in procs]
    holder = procs[first.index("CLAIMED")]
    refused = procs[first.index("REFUSED")]
    assert refused.wait(timeout=30) == 3
    # and in this process, while the child holds it: refused at once, with the reason
    with pytest.raises(FileExistsError, match="being written by another gradscope.watch"):
        gradscope.watch(torch.nn.Linear(3, 1), log_dir=log_dir, tensorboard=False)
    holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    again = gradscope.watch(torch.nn.Linear(3, 1), log_dir=log_dir, tensorboard=False)
    again.close()
    assert again.log_dir == tmp_path / "run-2"  # a finished run is kept; the next one is versioned


def test_lock_of_a_killed_run_is_stale(tmp_path):
    """Item 5: a process killed while writing leaves a lock nobody holds: the directory is not 'in use'."""
    log_dir = tmp_path / "run"
    proc = _hold(log_dir, 0)
    assert proc.stdout.readline().startswith("CLAIMED")
    proc.kill()
    proc.wait(timeout=30)
    assert (log_dir / ".gradscope-lock").exists()
    scope = record(log_dir, steps=2, overwrite=True)
    assert scope.log_dir == log_dir and not (log_dir / ".gradscope-lock").exists()


def test_default_log_dir_is_unique_and_printed_once(tmp_path, monkeypatch, capfd):
    """Item 6: a sweep of runs with log_dir=None in one second gets one directory each."""
    monkeypatch.chdir(tmp_path)
    dirs = [record(None, steps=2).log_dir for _ in range(3)]
    assert len(set(dirs)) == 3
    for d in dirs:
        assert gradscope.load_run(tmp_path / d).num_steps == 2
    err = capfd.readouterr().err
    for d in dirs:
        assert err.count(f"gradscope: recording to {d}\n") == 1


def test_compact_never_writes_or_deletes_through_a_symlinked_merged(tmp_path):
    """Item 7: RUN/merged pointing elsewhere is refused by compact and by the merge at close."""
    run_dir = tmp_path / "run"
    record(run_dir, compact=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "000.0123456789ab.npy").write_bytes(b"not gradscope's")
    (outside / "index.json").write_text("{}")
    before = tree(outside)
    (run_dir / "merged").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunError, match="symbolic link"):
        compact_run(run_dir)
    result = CliRunner().invoke(main, ["compact", str(run_dir)])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert tree(outside) == before
    run = gradscope.load_run(run_dir)  # still readable, from the chunks
    assert run.num_steps == 6 and np.isfinite(run.metric("param", "grad_norm")).all()


def test_merge_at_close_refuses_a_symlinked_merged(tmp_path):
    from gradscope.run.writer import RunWriter

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "001.0123456789ab.npy").write_bytes(b"not gradscope's")
    before = tree(outside)
    run_dir = tmp_path / "run"
    w = RunWriter(run_dir)
    w.write_manifest(gradscope.run.format.make_manifest([], {}, {}))
    w.write_chunk({"step": np.arange(3), "scalar/loss": np.ones(3, np.float32)})
    (run_dir / "merged").symlink_to(outside, target_is_directory=True)
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        w.close()
    assert tree(outside) == before
