"""Control: a tiny random-init BERT (embeddings + LayerNorm + residual blocks) trained with AdamW is
healthy. Its query/key weights get ~1e-3 of the gradient of the classifier at init (near-uniform
attention passes little gradient to the logits), which a first-vs-last comparison across different
roles used to read as vanishing; like-for-like layers (the same role in each block) are level."""

from __future__ import annotations

import pytest
import torch

import gradscope
from gradscope.diagnose import Severity, diagnose
from gradscope.diagnose._util import by_role, weight_profile

transformers = pytest.importorskip("transformers")


def _bert_run(path, layers: int = 4, steps: int = 30) -> gradscope.Run:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False) as scope:
        for _ in range(steps):
            ids = torch.randint(5, 100, (16, 16), generator=g)
            out = model(input_ids=ids, labels=(ids == 7).any(1).long())
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            scope.log(loss=out.loss.detach())
    return gradscope.load_run(path)


@pytest.mark.parametrize("layers", [2, 4])
def test_tiny_bert_is_healthy(tmp_path, layers):
    run = _bert_run(tmp_path / "bert", layers)
    findings = diagnose(run)
    assert [f for f in findings if f.severity != Severity.INFO] == [], [f.message for f in findings]
    # The numbers behind the verdict: across roles the spread is > 1e4 (the old false positive) ...
    prof = weight_profile(run)
    med = torch.tensor(prof.values).nanmedian(dim=0).values
    assert float(med.min() / med.max()) < 1e-4
    # ... while within each role (the same Linear in every block) the layers stay within 10x.
    for group in by_role(prof, 3):
        gm = torch.tensor(group.values).nanmedian(dim=0).values
        assert len(group.names) == layers and float(gm.min() / gm.max()) > 0.1, group.names
