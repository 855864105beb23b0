"""GradScopeCallback with live diagnosis in a real transformers.Trainer: a NaN planted in one BERT layer
is reported into the Trainer's log history and, with stop_on="error", stops trainer.train()."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import gradscope  # noqa: E402
from gradscope.integrations.hf import GradScopeCallback  # noqa: E402

STEPS, ACCUM, BATCH, NAN_STEP = 8, 2, 4, 3
LAYER = "bert.encoder.layer.1.output.dense"


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


class Capture(transformers.TrainerCallback):
    """A stand-in for a report_to logger: what on_log hands the loggers."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.logs.append(dict(logs or {}))


def train(out, nan_step: int | None, **callback_kwargs):  # noqa: ANN001, ANN201
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config)
    calls = [0]

    def plant(module, args, output):  # noqa: ANN001, ANN202
        calls[0] += 1  # ACCUM micro-batches per optimizer step
        if nan_step is not None and (calls[0] - 1) // ACCUM == nan_step:
            return output * float("nan")
        return None

    model.get_submodule(LAYER).register_forward_hook(plant)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUM,
        learning_rate=5e-3, max_steps=STEPS, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    callback, capture = GradScopeCallback(tensorboard=False, flush_every=2, **callback_kwargs), Capture()
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(64, 100, 12),
                      callbacks=[callback, capture])
    return trainer, callback, capture


def test_nan_stops_trainer_with_the_planted_layer(tmp_path):
    trainer, callback, _ = train(tmp_path / "out", NAN_STEP, stop_on="error")
    with pytest.raises(gradscope.HealthError) as info:
        trainer.train()
    err = info.value
    bad = NAN_STEP + 1  # steps are numbered like the Trainer's global_step, from 1
    assert (err.layer, err.phase, err.origin_step) == (LAYER, "forward", bad)
    # The callback flushes at each of the Trainer's logs (logging_steps=1): the step after the NaN stops.
    assert err.step == bad + 1
    run = gradscope.load_run(callback.log_dir)
    assert run.steps.tolist() == list(range(1, bad + 1))
    assert any(e["kind"] == "exception" and e["type"] == "HealthError" for e in run.events)


def test_findings_reach_the_trainer_log_history(tmp_path):
    trainer, callback, capture = train(tmp_path / "out", NAN_STEP)
    trainer.train()  # report only: training goes on
    entries = [h for h in trainer.state.log_history if "gradscope_finding" in h]
    assert [h["gradscope_finding"] for h in entries if h["severity"] == "error"] == ["nonfinite"]
    (nan,) = [h for h in entries if h["gradscope_finding"] == "nonfinite"]
    assert nan["layers"] == [LAYER] and NAN_STEP < nan["step"] <= STEPS
    assert [f.kind for f in callback.live_findings] == [h["gradscope_finding"] for h in entries]
    # ... and to the Trainer's logs while it trains, so to every report_to logger (severity 2: error)
    seen = {k: v for logs in capture.logs if "train_runtime" not in logs for k, v in logs.items()}
    assert seen.get("gradscope/findings/nonfinite") == 2.0
    assert trainer.state.global_step == STEPS
