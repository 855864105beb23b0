"""The CLI on hostile inputs: no traceback, no hang, no walk of the whole disk (items 12, 13 and the
"analyze /" item of issue 12). Each command runs in a child process with a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from hardening_helpers import child_env, tiny_model, train

import gradscope

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, non-UTF-8 file names")


def gradscope_cli(*args: str, cwd=None, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradscope.cli", *args], capture_output=True, cwd=cwd,
                          env=env or child_env(), timeout=timeout, check=False)


def record(log_dir) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=log_dir, flush_every=4, tensorboard=False) as scope:
        train(model, opt, 6, scope=scope)


def test_non_utf8_directory_and_row_names(tmp_path):
    """Item 12: a run directory named with a non-UTF-8 byte and a row name with a lone surrogate."""
    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    record(run)
    manifest = json.loads(open(os.path.join(run, "manifest.json"), encoding="utf-8").read())
    manifest["rows"][0]["name"] = "enc\udcffoder.weight"
    with open(os.path.join(run, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest))  # ensure_ascii writes the surrogate as \\udcff
    env = {**child_env(), "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}  # strict UTF-8 output
    for args in (["analyze", run], ["analyze", run, "--format", "markdown"], ["analyze", run, "--format", "json"],
                 ["compact", run], ["analyze", run, "--plots", str(tmp_path / "plots")]):
        done = gradscope_cli(*args, env=env)
        err = done.stderr.decode("utf-8", "replace")
        assert done.returncode == 0, (args, err)
        assert b"Traceback" not in done.stderr
        if "--format" not in args and args[0] == "analyze":
            assert b"run\\xff" in done.stdout or b"run\\udcff" in done.stdout  # an escape
    assert sorted(p.suffix for p in (tmp_path / "plots").iterdir()) and all(
        p.stat().st_size > 1000 for p in (tmp_path / "plots").iterdir())


def test_fifo_named_like_an_event_file_does_not_hang(tmp_path):
    """Item 13: a FIFO `events.out.tfevents.*` in a TensorBoard log: exit 2 naming it, at once."""
    log = tmp_path / "tblog"
    log.mkdir()
    os.mkfifo(log / "events.out.tfevents.123.host")
    start = time.monotonic()
    done = gradscope_cli("analyze", str(log), timeout=30)
    assert done.returncode == 2 and b"not a regular file" in done.stderr and b"Traceback" not in done.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("config", ["fifo", "/dev/zero"])
def test_config_that_is_not_a_regular_file(tmp_path, config):
    """Item 13: --config pointing at a FIFO (would block) or /dev/zero (would never end): exit 2."""
    run = tmp_path / "run"
    record(run)
    if config == "fifo":
        config = str(tmp_path / "thresholds.toml")
        os.mkfifo(config)
    done = gradscope_cli("analyze", str(run), "--config", config, timeout=30)
    assert done.returncode == 2, done.stderr
    assert b"--config" in done.stderr and b"Traceback" not in done.stderr


def test_analyze_root_does_not_walk_the_filesystem(tmp_path):
    """Also: `gradscope analyze /` fails fast with the usual message instead of walking every file."""
    deep = tmp_path / "a"
    for i in range(8):  # event files deeper than a TensorBoard log root ever holds them are not looked for
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "events.out.tfevents.1.host").write_bytes(b"")
    start = time.monotonic()
    done = gradscope_cli("analyze", "/", timeout=60)  # what / holds (runs in /tmp?) varies by machine
    assert done.returncode in (0, 1, 2) and b"Traceback" not in done.stderr
    done = gradscope_cli("analyze", str(tmp_path), timeout=60)
    assert done.returncode == 2 and b"has no manifest.json" in done.stderr
    assert time.monotonic() - start < 60
