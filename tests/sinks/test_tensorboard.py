"""TensorBoardSink: event files equal the run directory, read back by tensorboard's own loader and by
a real TensorBoard server (HTTP data API); the sink never raises into training."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")

import gradscope  # noqa: E402
from gradscope.sinks.tensorboard import TensorBoardSink, block_of, row_tag  # noqa: E402

STEPS = 20


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def record(path: Path, steps: int = STEPS, **kwargs) -> gradscope.Scope:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.watch(model, opt, log_dir=path, flush_every=7, **kwargs) as scope:
        for _ in range(steps):
            x = torch.randn(16, 8)
            loss = (model(x) - x[:, :1]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scope.log(loss=loss, clip_coef=torch.clamp(0.5 / (norm + 1e-6), max=1.0))
            opt.step()
    return scope


def accumulator(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    scope = record(root / "live", tensorboard=True)
    assert scope.write_errors == [] and scope._writer.sinks[0].errors == []
    return root, gradscope.load_run(root / "live")


def expected_series(run) -> dict[str, tuple[list[int], np.ndarray]]:
    """tag -> (steps, float32 values) that the sink must have written for ``run``."""
    out = {}
    for name, values in run.scalars.items():
        out[f"global/{name}"] = (run.steps.tolist(), values)
    for kind, metric, group in (("param", "grad_norm", "grad_norm"), ("flow", "norm", "flow_norm"),
                                ("act", "std", "act_std")):
        arr = run.metric(kind, metric)
        for c, row in enumerate(run.rows_of(kind)):
            keep = np.isfinite(arr[:, c])
            out[row_tag(group, row.name, row.depth)] = (run.steps[keep].tolist(), arr[keep, c])
    return out


def test_event_files_hold_the_run(recorded):
    root, run = recorded
    acc = accumulator(root / "live" / "tb")
    tags = acc.Tags()
    want = expected_series(run)
    assert {"global/grad_norm", "global/loss", "global/lr", "global/clip_coef"} <= set(want)
    for tag, (steps, values) in want.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps, tag
        np.testing.assert_array_equal(np.array([e.value for e in events], np.float32), values, err_msg=tag)
    assert "update_ratio/000.blocks.0.0.weight" in tags["scalars"]  # sampled every 10th step
    hist = acc.Histograms("hist/log10_grad_norm")
    assert [h.step for h in hist] == run.steps.tolist()
    assert all(h.histogram_value.num == len(run.rows_of("param")) for h in hist)
    assert {"run/config", "summary/findings", "custom_scalars__config__"} <= set(tags["tensors"])


def test_custom_scalars_layout_groups_layers_by_block(recorded):
    from tensorboard.plugins.custom_scalar import layout_pb2

    root, run = recorded
    acc = accumulator(root / "live" / "tb")
    config = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
    cats = {c.title: c for c in layout_pb2.Layout.FromString(config).category}
    blocks = [ch.title for ch in cats["grad_norm by block"].chart]
    assert blocks == ["blocks.0", "blocks.1", "blocks.2", "head"]
    chart = cats["grad_norm by block"].chart[1]
    pattern = re.compile(chart.multiline.tag[0])
    matched = [t for t in acc.Tags()["scalars"] if pattern.match(t)]
    assert matched == [row_tag("grad_norm", r.name, r.depth) for r in run.rows_of("param")
                       if r.name.startswith("blocks.1.")]
    assert {ch.title for ch in cats["global"].chart} == set(run.scalars)


def test_block_of():
    assert block_of("bert.encoder.layer.3.attention.self.query.weight", "param") == "bert.encoder.layer.3"
    assert block_of("bert.embeddings.word_embeddings.weight", "param") == "bert.embeddings"
    assert block_of("classifier.weight", "param") == "classifier"
    assert block_of("0.weight", "param") == "0"
    assert block_of("bias", "param") == "(root)"
    assert block_of("encoder.layer.0.output.dense", "flow") == "encoder.layer.0"
    assert block_of("net.2", "act") == "net"


def test_sink_never_raises(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    with pytest.warns(RuntimeWarning, match="TensorBoard sink failed"):
        sink.write_manifest({"rows": [{"no": "name"}]})
    sink.write_chunk({"scalar/loss": np.ones(3, np.float32)})  # no "step"
    sink.write_events([{"step": 0, "kind": "x", "bad": object()}])
    sink.close()
    assert len(sink.errors) >= 2 and all(isinstance(e, str) for e in sink.errors)


def test_broken_sink_does_not_stop_training(tmp_path, monkeypatch):
    def boom(self, step, values):
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardSink, "_emit", boom)
    with pytest.warns(RuntimeWarning, match="TensorBoard sink failed"):
        scope = record(tmp_path / "run", steps=5, tensorboard=True)
    assert gradscope.load_run(tmp_path / "run").num_steps == 5  # the run directory itself is complete
    assert scope._writer.errors == []
    assert any("disk full" in e for e in scope._writer.sinks[0].errors)
    assert any("disk full" in e for e in scope.write_errors)  # sink errors surface to the user


# -- a real TensorBoard server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **params: str):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read().decode())


def _wait(check, deadline: float, what: str):
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except OSError as exc:  # not listening yet, or reloading
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"TensorBoard server: timed out waiting for {what} ({last})")


@pytest.fixture(scope="module")
def server(recorded):
    from gradscope.report.export import export_tensorboard

    root, run = recorded
    export_tensorboard(run, root / "exported")
    for _attempt in range(3):
        port = _free_port()
        log = open(root / f"server-{port}.log", "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
             "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
            stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda p=proc, b=base: p.poll() is not None or _get(b, "/data/runs"),
                  time.monotonic() + 25, "start")
            if proc.poll() is None:
                break
        except AssertionError:
            pass
        proc.kill()
        proc.wait(5)
        log.close()
    else:
        pytest.fail("TensorBoard server did not start: " + (root / f"server-{port}.log").read_text()[-2000:])
    try:
        yield base, run
    finally:  # always stop the server
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_tensorboard_server_serves_what_gradscope_recorded(server):
    base, run = server
    want = expected_series(run)
    deadline = time.monotonic() + 20

    def loaded():
        tags = _get(base, "/data/plugin/scalars/tags")
        return tags if all(set(want) <= set(tags.get(r, {})) for r in ("live/tb", "exported")) else None

    tags = _wait(loaded, deadline, "runs and tags")
    assert set(_get(base, "/data/runs")) == {"live/tb", "exported"}
    for run_name in ("live/tb", "exported"):
        assert set(tags[run_name]) >= set(want)
        for tag in ("global/grad_norm", "global/loss", "global/clip_coef",
                    row_tag("grad_norm", run.rows_of("param")[0].name, 0), "flow_norm/006.head"):
            steps, values = want[tag]
            points = _wait(lambda t=tag, r=run_name: _get(base, "/data/plugin/scalars/scalars", run=r, tag=t),
                           deadline, tag)
            assert [p[1] for p in points] == steps, (run_name, tag)
            assert [np.float32(p[2]) for p in points] == values.tolist(), (run_name, tag)
    plugins = _get(base, "/data/plugins_listing")
    assert plugins["custom_scalars"]["enabled"] and plugins["histograms"]["enabled"]
    layout = _get(base, "/data/plugin/custom_scalars/layout")
    assert any(c["title"] == "grad_norm by block" for c in layout["category"])
