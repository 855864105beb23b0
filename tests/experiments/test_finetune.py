"""The fine-tuning task on the tiny random BERT: regimes freeze what they say; a short run records."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from gradscope.experiments.finetune import Classifier, apply_regime, resolve_backbone  # noqa: E402
from gradscope.experiments.grid import Config  # noqa: E402
from gradscope.experiments.runner import run_config  # noqa: E402
from gradscope.experiments.tasks import TaskError  # noqa: E402


def _trainable(model):
    return {n.split(".")[0] if n.startswith("head") else ".".join(n.split(".")[:4])
            for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("regime", "expect"), [
    ("frozen", {"head"}),
    ("top1", {"head", "backbone.encoder.layer.1"}),
    ("top2", {"head", "backbone.encoder.layer.0", "backbone.encoder.layer.1"}),
])
def test_regimes_unfreeze_the_top_layers_and_head(regime, expect):
    model = Classifier("tiny")
    apply_regime(model, regime)
    assert _trainable(model) == expect


def test_full_trains_everything_and_too_many_layers_is_an_error():
    model = Classifier("tiny")
    apply_regime(model, "full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TaskError, match="only 2 layers"):
        apply_regime(Classifier("tiny"), "top3")
    with pytest.raises(TaskError, match="unknown"):
        resolve_backbone("gpt9")


def test_short_finetune_run_records_and_is_deterministic(tmp_path):
    cfg = Config("finetune", 0, 4, 1e-3, "norm", batch=8, regime="top1", backbone="tiny")
    a, b = run_config(cfg, tmp_path / "a"), run_config(cfg, tmp_path / "b")
    assert a["final"] == b["final"] and a["metrics"] == b["metrics"]
    assert a["metrics"]["steps_recorded"] == 4 and a["metrics"]["grad_ratio"] is not None
    assert "backbone.encoder.layer.1" in a["curves"]["layers"][0]  # first trainable weight: top layer
