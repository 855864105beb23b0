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
from gradscope.sinks.tensorboard import TensorBoardSink, block_of  # noqa: E402

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


def layer_dirs(tb: Path) -> dict[str, Path]:
    """group label -> its TensorBoard run directory (``tb/layers/NN label``)."""
    return {p.name.split(" ", 1)[1]: p for p in sorted((tb / "layers").iterdir())}


def expected_series(run) -> dict[tuple[str, str], tuple[list[int], np.ndarray]]:
    """(run below tb/, tag) -> (steps, float32 values) that the sink must have written for ``run``,
    from the run's arrays and a float64 L2 norm over each block's rows computed here."""
    out = {}
    for name, values in run.scalars.items():  # NaN = not recorded at that step (sampled scalars)
        keep = np.isfinite(values)
        out[("", f"global/{name}")] = (run.steps[keep].tolist(), values[keep])
    blocks = {"blocks.0": "00 blocks.0", "blocks.1": "01 blocks.1", "blocks.2": "02 blocks.2", "head": "03 head"}
    for kind, metric, group in (("param", "grad_norm", "grad_norm"), ("flow", "norm", "flow_norm"),
                                ("act", "std", "act_std")):
        arr = run.metric(kind, metric)
        for block, sub in blocks.items():
            cols = [c for c, r in enumerate(run.rows_of(kind)) if r.name == block or r.name.startswith(block + ".")]
            for c in cols:
                role = run.rows_of(kind)[c].name[len(block) + 1:] or "output"
                keep = np.isfinite(arr[:, c])
                out[(sub, f"{group}/{role}")] = (run.steps[keep].tolist(), arr[keep, c])
            if metric != "std":
                norm = np.sqrt(np.square(arr[:, cols].astype(np.float64)).sum(axis=1))
                keep = np.isfinite(norm)
                out[(sub, f"depth/{group}")] = (run.steps[keep].tolist(), norm[keep].astype(np.float32))
    return out


def test_event_files_hold_the_run(recorded):
    root, run = recorded
    tb = root / "live" / "tb"
    dirs = layer_dirs(tb)
    assert list(dirs) == ["blocks.0", "blocks.1", "blocks.2", "head"]  # depth order, one run per block
    accs = {"": accumulator(tb), **{d.name: accumulator(d) for d in dirs.values()}}
    want = expected_series(run)
    assert {("", "global/grad_norm"), ("", "global/loss"), ("", "global/lr"), ("", "global/clip_coef"),
            ("01 blocks.1", "grad_norm/0.weight"), ("03 head", "depth/grad_norm")} <= set(want)
    for (sub, tag), (steps, values) in want.items():
        events = accs[sub].Scalars(tag)
        assert [e.step for e in events] == steps, (sub, tag)
        if tag.startswith("depth/"):  # the sink's norm over the block, against float64 here
            np.testing.assert_allclose([e.value for e in events], values, rtol=1e-6, err_msg=tag)
        else:
            np.testing.assert_array_equal(np.array([e.value for e in events], np.float32), values, err_msg=tag)
    assert "update_ratio/0.weight" in accs["00 blocks.0"].Tags()["scalars"]  # sampled every 10th step
    log10 = accs["00 blocks.0"].Scalars("depth/log10_grad_norm")
    np.testing.assert_allclose([e.value for e in log10],
                               np.log10([e.value for e in accs["00 blocks.0"].Scalars("depth/grad_norm")]), atol=1e-5)
    # each step carries its own host wall time from the run, in every TensorBoard run
    assert np.isfinite(run.wall_time).all() and np.all(np.diff(run.wall_time) > 0)
    for acc in accs.values():
        events = acc.Scalars(acc.Tags()["scalars"][0])
        at = np.isin(run.steps, [e.step for e in events])
        np.testing.assert_allclose([e.wall_time for e in events], run.wall_time[at], rtol=0, atol=1e-3)
    hist = accs[""].Histograms("hist/log10_grad_norm")
    assert [h.step for h in hist] == run.steps.tolist()
    assert all(h.histogram_value.num == len(run.rows_of("param")) for h in hist)
    assert {"run/config", "findings", "custom_scalars__config__"} <= set(accs[""].Tags()["tensors"])
    images = accs[""].Images("gradient_flow")
    assert images and images[-1].step == run.steps[-1]
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[-1].width > 500


def test_custom_scalars_layout_overlays_blocks(recorded):
    from tensorboard.plugins.custom_scalar import layout_pb2

    root, run = recorded
    acc = accumulator(root / "live" / "tb")
    config = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
    cats = {c.title: c for c in layout_pb2.Layout.FromString(config).category}
    overlay = cats["by depth: one line per block"]
    titles = [ch.title for ch in overlay.chart]
    assert titles[:2] == ["grad_norm by block", "log10 grad_norm by block"]
    assert re.match(overlay.chart[0].multiline.tag[0], "depth/grad_norm")
    roles = cats["grad_norm of each role, one line per block"]
    assert [ch.title for ch in roles.chart] == ["0.weight", "0.bias", "weight", "bias"]
    pattern = re.compile(roles.chart[0].multiline.tag[0])
    holding = [d.name for d in layer_dirs(root / "live" / "tb").values()
               if any(pattern.match(t) for t in accumulator(d).Tags()["scalars"])]
    assert holding == ["00 blocks.0", "01 blocks.1", "02 blocks.2"]  # one line per block, own colour
    assert {ch.title for ch in cats["global"].chart} == set(run.scalars)


def test_findings_with_remedies_in_the_text_tab(recorded):
    root, run = recorded
    from gradscope.diagnose import diagnose

    acc = accumulator(root / "live" / "tb")
    text = acc.Tensors("findings")[-1].tensor_proto.string_val[0].decode()
    found = diagnose(run)
    for f in found:
        assert f.kind in text and f.remedy in text
    assert found or "No findings" in text


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
    def boom(self, step, wall_time, values):
        raise OSError("disk full")

    from gradscope.sinks.tb_files import EventFile

    monkeypatch.setattr(EventFile, "add", boom)
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


def _tb_run(top: str, sub: str) -> str:
    """TensorBoard's name of a run: the main one (``live/tb``) or a layer run below it."""
    return f"{top}/layers/{sub}" if sub else top


def test_tensorboard_server_serves_what_gradscope_recorded(server):
    base, run = server
    want = expected_series(run)
    deadline = time.monotonic() + 30
    runs = {_tb_run(top, sub) for top in ("live/tb", "exported") for sub, _ in want}

    def loaded():
        tags = _get(base, "/data/plugin/scalars/tags")
        return tags if all(r in tags for r in runs) else None

    tags = _wait(loaded, deadline, "runs and tags")
    assert set(_get(base, "/data/runs")) >= runs
    for top in ("live/tb", "exported"):
        for sub, tag in (("", "global/grad_norm"), ("", "global/loss"), ("", "global/clip_coef"),
                         ("00 blocks.0", "grad_norm/0.weight"), ("03 head", "flow_norm/output"),
                         *((f"0{i} {b}", "depth/grad_norm") for i, b in
                           enumerate(["blocks.0", "blocks.1", "blocks.2", "head"]))):
            steps, values = want[(sub, tag)]
            name = _tb_run(top, sub)
            points = _wait(lambda t=tag, r=name: _get(base, "/data/plugin/scalars/scalars", run=r, tag=t),
                           deadline, f"{name} {tag}")
            assert [p[1] for p in points] == steps, (name, tag)
            np.testing.assert_allclose([p[0] for p in points], run.wall_time[np.isin(run.steps, steps)],
                                       rtol=0, atol=1e-3, err_msg=f"wall time {name} {tag}")
            if tag.startswith("depth/"):
                np.testing.assert_allclose([p[2] for p in points], values, rtol=1e-6)
            else:
                assert [np.float32(p[2]) for p in points] == values.tolist(), (name, tag)
    # one chart overlays the blocks: the same tag in one run per block
    overlay = [r for r, t in tags.items() if r.startswith("live/tb/layers/") and "depth/grad_norm" in t]
    assert sorted(overlay) == [f"live/tb/layers/0{i} {b}" for i, b in
                               enumerate(["blocks.0", "blocks.1", "blocks.2", "head"])]
    plugins = _get(base, "/data/plugins_listing")
    assert all(plugins[p]["enabled"] for p in ("custom_scalars", "histograms", "images", "text"))
    layout = _get(base, "/data/plugin/custom_scalars/layout")
    assert layout["category"][0]["title"] == "by depth: one line per block"
    images = _get(base, "/data/plugin/images/images", run="live/tb", tag="gradient_flow")
    assert images and images[-1]["step"] == int(run.steps[-1])
    url = base + "/data/plugin/images/individualImage?" + images[-1]["query"]
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.read()[:8] == b"\x89PNG\r\n\x1a\n"
    text = _get(base, "/data/plugin/text/text", run="live/tb", tag="findings")
    assert text and ("Remedy" in text[-1]["text"] or "No findings" in text[-1]["text"])
