"""`gradscope export RUN --tensorboard DIR` and reading TensorBoard logs back (gradscope.run.tbread)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

pytest.importorskip("tensorboard")

import gradscope  # noqa: E402
from gradscope.cli import main  # noqa: E402
from gradscope.report import export as export_mod  # noqa: E402
from gradscope.run.reader import RunError  # noqa: E402
from gradscope.run.tbread import load_tensorboard  # noqa: E402


def record(path, steps=12, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with gradscope.watch(model, opt, log_dir=path, flush_every=5, tensorboard=False) as scope:
        for _ in range(steps):
            loss = model(torch.randn(8, 6)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            scope.log(loss=loss)
            opt.step()
    assert not (path / "tb").exists()
    return gradscope.load_run(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return root, record(root / "a", seed=0), record(root / "b", seed=1)


def test_export_cli_round_trips_through_tensorboard(runs):
    root, a, b = runs
    out = root / "tb1"
    result = CliRunner().invoke(main, ["export", str(root / "a"), str(root / "b"), "--tensorboard", str(out)])
    assert result.exit_code == 0, result.output
    assert "tensorboard --logdir" in result.output
    for name, run in (("a", a), ("b", b)):
        back = load_tensorboard(out / name)
        assert back.steps.tolist() == run.steps.tolist()
        assert set(back.scalars) == set(run.scalars) | {"grad_nonfinite"}
        for key, values in run.scalars.items():
            np.testing.assert_array_equal(back.scalars[key], values, err_msg=key)
        assert not np.array_equal(back.scalars["grad_norm"], (a if run is b else b).scalars["grad_norm"])
        assert back.rows == [] and back.metric("param", "grad_norm").shape == (run.num_steps, 0)
    with pytest.raises(RunError, match="2 TensorBoard runs"):
        load_tensorboard(out)
    assert load_tensorboard(out, run="b").steps.shape == (12,)


def test_export_in_small_chunks_writes_the_same(runs, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, a, _ = runs
    monkeypatch.setattr(export_mod, "CHUNK_STEPS", 5)
    export_mod.export_tensorboard(a, root / "small", histograms=False)
    acc = EventAccumulator(str(root / "small"), size_guidance={"scalars": 0})
    acc.Reload()
    np.testing.assert_array_equal([e.value for e in acc.Scalars("global/grad_norm")], a.scalars["grad_norm"])
    assert not acc.Tags()["histograms"]
    first = a.rows_of("param")[0]  # its layer run, the first by depth
    layer = EventAccumulator(str(sorted((root / "small" / "layers").iterdir())[0]), size_guidance={"scalars": 0})
    layer.Reload()
    got = [e.value for e in layer.Scalars(f"grad_norm/{first.name.rpartition('.')[2]}")]
    np.testing.assert_array_equal(np.array(got, np.float32), a.metric("param", "grad_norm")[:, 0])


def test_duplicate_run_names_get_suffixes(runs, tmp_path):
    root, _, _ = runs
    written = export_mod.export_runs([root / "a", root / "a"], tmp_path / "tb")
    assert [p.name for p in written] == ["a", "a-2"]


@pytest.mark.parametrize("case", ["missing", "not_a_run", "existing", "file_as_dir"])
def test_export_bad_input_exits_2_with_one_line(runs, tmp_path, case):
    root, _, _ = runs
    run, out = root / "a", tmp_path / "tb"
    if case == "missing":
        run = tmp_path / "nope"
    elif case == "not_a_run":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "existing":
        assert CliRunner().invoke(main, ["export", str(run), "--tensorboard", str(out)]).exit_code == 0
    else:
        out = tmp_path / "file"
        out.write_text("x")
    result = CliRunner().invoke(main, ["export", str(run), "--tensorboard", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) <= 2
    if case == "existing":  # --overwrite replaces the files instead of appending duplicates
        ok = CliRunner().invoke(main, ["export", str(run), "--tensorboard", str(out), "--overwrite"])
        assert ok.exit_code == 0 and len(list((out / "a").glob("*tfevents*"))) == 1
        assert all(len(list(d.glob("*tfevents*"))) == 1 for d in (out / "a" / "layers").iterdir())


def test_tbread_errors_name_the_problem(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_tensorboard(tmp_path / "nope")
    with pytest.raises(RunError, match="no TensorBoard event files"):
        load_tensorboard(tmp_path)
    with pytest.raises(RunError, match="no TensorBoard run 'x'"):
        load_tensorboard(tmp_path, run="x")


def test_tbread_reads_a_plain_summarywriter_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for step in range(1, 6):
            w.add_scalar("train/loss", 1.0 / step, step)
            w.add_scalar("train/grad_norm", float(step), step)
            w.add_scalar("train/learning_rate", 1e-3, step)
            if step % 2 == 0:
                w.add_scalar("eval/loss", 0.5, step)
            w.add_scalar("new_style", step * 2.0, step, new_style=True)  # a tensor-scalar summary
    run = load_tensorboard(tmp_path)
    assert run.steps.tolist() == [1, 2, 3, 4, 5]
    assert set(run.scalars) == {"loss", "grad_norm", "lr", "eval/loss", "new_style"}
    np.testing.assert_array_equal(run.scalars["grad_norm"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(run.scalars["new_style"], [2, 4, 6, 8, 10])
    assert np.isnan(run.scalars["eval/loss"][[0, 2, 4]]).all() and run.scalars["eval/loss"][1] == 0.5
