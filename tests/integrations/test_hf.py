"""GradScopeCallback with a real transformers.Trainer on CPU: a tiny random-init BERT.

The Trainer's own logged ``grad_norm`` (the pre-clip total norm returned by clip_grad_norm_) is the
reference: gradscope's recorded global norm must equal it at every optimizer step, with gradient
accumulation and clipping on. The Trainer's TensorBoard log of the same run checks tbread.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")  # the hf extra; installed in dev environments

import gradscope  # noqa: E402
from gradscope.integrations.hf import GradScopeCallback, torch_optimizer  # noqa: E402

STEPS, ACCUM, BATCH = 6, 2, 4


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, vocab: int, length: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}


class LogCapture(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.grad_norm: dict[int, float] = {}
        self.optimizer_types: list[str] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer_types.append(type(optimizer).__name__)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "grad_norm" in logs:
            self.grad_norm[state.global_step] = float(logs["grad_norm"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("hf") / "out")


def train(out, **callback_kwargs):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
        max_grad_norm=1.0, learning_rate=5e-3, max_steps=STEPS, logging_steps=1,
        report_to="tensorboard",  # the reporting callback the Trainer puts before user callbacks
        save_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    capture, callback = LogCapture(), GradScopeCallback(tensorboard=False, **callback_kwargs)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(64, 100, 12),
                      callbacks=[callback, capture])
    trainer.train()
    model.log_history = trainer.state.log_history  # the Trainer's own record of what it logged
    model.callback_order = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    return out, callback, capture, model


def test_global_norm_equals_trainer_grad_norm(trained):
    out, callback, capture, model = trained
    assert callback.log_dir == out / "gradscope"
    run = gradscope.load_run(callback.log_dir)
    assert run.num_steps == STEPS  # once per optimizer step, not per micro-batch
    # steps are the Trainer's global_step, as in its log_history (which counts from 1)
    logged = {h["step"]: h["grad_norm"] for h in model.log_history if "grad_norm" in h}
    assert run.steps.tolist() == sorted(logged) == list(range(1, STEPS + 1))
    ours = run.scalars["grad_norm"].astype(np.float64)
    theirs = np.array([capture.grad_norm[s] for s in run.steps.tolist()])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(ours, [logged[s] for s in run.steps.tolist()], rtol=1e-5)
    assert theirs.max() > 1.0, "clipping never engaged: the test would not tell pre-clip from post-clip"
    assert capture.optimizer_types[0] == "AcceleratedOptimizer"  # the wrapper; gradscope unwraps it


def test_every_2_records_the_same_steps_as_every_step(trained, tmp_path):
    """With every=2 the hooks are off on odd steps; the callback logs the loss before optimizer.step(),
    and it must still land on its own step."""
    out, callback, capture, _ = train(tmp_path / "out", every=2)
    dense, sparse = gradscope.load_run(trained[1].log_dir), gradscope.load_run(callback.log_dir)
    assert sparse.steps.tolist() == [2, 4, 6]  # every 2nd global step, as logging_steps=2 would log
    theirs = np.array([capture.grad_norm[s] for s in sparse.steps.tolist()])
    np.testing.assert_allclose(sparse.scalars["grad_norm"], theirs, rtol=1e-5)
    at = [dense.steps.tolist().index(s) for s in (2, 4, 6)]
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(sparse.scalars[name], dense.scalars[name][at], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(sparse.metrics["act/std"], dense.metrics["act/std"][at], rtol=1e-5)


def test_rows_loss_and_clean_detach(trained):
    out, callback, _, model = trained
    run = gradscope.load_run(callback.log_dir)
    names = [r.name for r in run.rows_of("param")]
    assert "bert.encoder.layer.1.output.dense.weight" in names
    assert np.isfinite(run.metric("param", "grad_norm")).any(axis=0).sum() > 0.9 * len(names)
    assert run.rows_of("act") and np.isfinite(run.metric("act", "std")).all(axis=0).any()
    assert np.isfinite(run.scalars["loss"]).all() and np.isfinite(run.scalars["lr"]).all()
    assert any(e["kind"] == "trainer" and e["gradient_accumulation_steps"] == ACCUM for e in run.events)
    assert callback.scope is None and callback._hook is None
    assert not model._forward_hooks  # every hook the callback and the Scope added is gone


def test_tbread_reads_the_trainer_tensorboard_log(trained):
    pytest.importorskip("tensorboard")
    from gradscope.run.tbread import load_tensorboard

    out, _, capture, _ = trained
    tb = load_tensorboard(out / "runs")
    assert tb.rows == [] and "grad_norm" in tb.scalars and "loss" in tb.scalars and "lr" in tb.scalars
    assert tb.manifest["config"]["recognised"] == {"loss": "train/loss", "grad_norm": "train/grad_norm"}
    assert tb.manifest["config"]["tags"]["grad_norm"] == "train/grad_norm"
    logged = np.isfinite(tb.scalars["grad_norm"])
    steps = tb.steps[logged]
    assert steps.tolist() == sorted(capture.grad_norm)
    expect = np.array([capture.grad_norm[s] for s in steps.tolist()], dtype=np.float32)
    np.testing.assert_allclose(tb.scalars["grad_norm"][logged], expect, rtol=1e-6)


def test_torch_optimizer_unwraps_and_rejects():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(2))], lr=0.1)

    class Wrapper:
        optimizer = opt

    assert torch_optimizer(Wrapper()) is opt and torch_optimizer(opt) is opt
    assert torch_optimizer(object()) is None and torch_optimizer(None) is None


def test_headline_statistics_and_findings_reach_report_to(trained):
    """The callback's gradscope/ entries in the Trainer's logs reach the TensorBoard reporting callback."""
    pytest.importorskip("tensorboard")
    from gradscope.run.tbread import load_tensorboard

    out, callback, _, model = trained
    order = model.callback_order  # the Trainer put TensorBoardCallback first; the callback moved ahead
    assert order.index("GradScopeCallback") < order.index("TensorBoardCallback"), order
    tb = load_tensorboard(out / "runs")
    run = gradscope.load_run(callback.log_dir)
    ours = tb.scalars["train/gradscope/grad_norm"]
    at = tb.logged["train/gradscope/grad_norm"]
    assert at.sum() == STEPS  # logging_steps=1: one point per step, at the Trainer's own step
    expect = dict(zip(run.steps.tolist(), run.scalars["grad_norm"].tolist(), strict=True))
    np.testing.assert_allclose(ours[at], [expect[s] for s in tb.steps[at].tolist()], rtol=1e-6)
    errors = sum(f.severity.value == "error" for f in callback.findings)
    assert tb.scalars["train/gradscope/error"][tb.logged["train/gradscope/error"]].tolist() == [errors]


def test_analyze_output_dir_finds_the_gradscope_run(trained, tmp_path):
    import json
    import shutil

    from click.testing import CliRunner

    from gradscope.cli import main

    out, callback, _, _ = trained
    res = CliRunner().invoke(main, ["analyze", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["run"] == str(callback.log_dir)
    # a directory holding two runs: analysed as two, each named
    shutil.copytree(callback.log_dir, tmp_path / "sweep" / "a")
    shutil.copytree(callback.log_dir, tmp_path / "sweep" / "b" / "gradscope")
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "sweep"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["run"] for r in json.loads(res.stdout)] == [str(tmp_path / "sweep" / "a"),
                                                          str(tmp_path / "sweep" / "b" / "gradscope")]
