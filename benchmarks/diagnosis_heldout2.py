#!/usr/bin/env python
"""Held-out check of gradscope's verdicts (second independent set, written 2026-12-07 by a helper
session that read only the README, not the detectors, the tests or the first held-out set).

Each scenario is a small, realistic training run with a known fault (or none). It is recorded with
gradscope.watch(), then `gradscope analyze RUN --format json` is run on it and the headline (root
cause) is compared with the expectation written below BEFORE any run was made.

    python benchmarks/diagnosis_heldout2.py --out DIR --seed N [--only NAME[,NAME]] [--dry]

Expectations (fixed before the first run; never edited after seeing results):
  expect   kinds acceptable as the headline / root cause (faulty scenarios)
  partial  kinds that describe a real symptom of the fault but not its root cause (reported, scored
           as a miss)
  origin   (nonfinite scenario only) substring the reported origin layer must contain
  healthy  scenarios: no finding of severity warning or error (info is fine); loss must fall clearly
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope

torch.set_num_threads(1)

# --------------------------------------------------------------------------------------------------
# Expectations, written before running anything.
# --------------------------------------------------------------------------------------------------
EXPECT = {
    # ---- faulty ----
    "lr_diverge": dict(healthy=False, expect={"learning_rate", "update_ratio"},
                       partial={"exploding_gradient", "nonfinite", "loss_spike", "gradient_spike"}),
    "nan_mid_layer": dict(healthy=False, expect={"nonfinite"}, origin="mid_norm",
                          partial=set()),
    "deep_sigmoid_vanish": dict(healthy=False, expect={"vanishing_gradient"},
                                partial={"loss_plateau", "saturation"}),
    "deep_init_explode": dict(healthy=False, expect={"exploding_gradient"},
                              partial={"nonfinite", "gradient_spike", "learning_rate", "update_ratio"}),
    "dead_relu_bias": dict(healthy=False, expect={"dead_units"},
                           partial={"vanishing_gradient", "loss_plateau"}),
    "input_x100_tanh": dict(healthy=False, expect={"input_scale", "saturation"},
                            partial={"vanishing_gradient", "loss_plateau"}),
    "forgot_zero_grad": dict(healthy=False, expect={"stale_gradients"},
                             partial={"exploding_gradient", "learning_rate", "gradient_spike", "update_ratio"}),
    "detach_bug": dict(healthy=False, expect={"unused_parameter"},
                       partial={"frozen_parameters", "vanishing_gradient"}),
    "unused_module": dict(healthy=False, expect={"unused_parameter"}, partial=set()),
    "frozen_backbone": dict(healthy=False, expect={"frozen_parameters"},
                            partial={"loss_plateau"}),
    "rnn_explode": dict(healthy=False, expect={"rnn_gradient", "exploding_gradient"},
                        partial={"nonfinite", "gradient_spike", "loss_spike"}),
    "lr_tiny": dict(healthy=False, expect={"update_ratio", "learning_rate", "loss_plateau"},
                    partial=set()),
    # ---- healthy: no warning or error anywhere (info allowed), and the loss must fall ----
    "h_mlp_adam": dict(healthy=True),
    "h_cnn_synth": dict(healthy=True),
    "h_lstm_seq": dict(healthy=True),
    "h_gpt2_toy": dict(healthy=True),
    "h_bert_cls": dict(healthy=True),
    "h_relu_sgd_momentum": dict(healthy=True),
    # ---- EXTRAS: added after the core 18 had been run once (expectations written before these
    # extras were first run); reported separately, not in the core totals ----
    "x_lr_spike_dead": dict(healthy=False, extra=True,
                            expect={"learning_rate", "update_ratio", "dead_units"},
                            partial={"gradient_spike", "loss_spike", "vanishing_gradient"}),
    "x_adam_lr_high": dict(healthy=False, extra=True, expect={"learning_rate", "update_ratio"},
                           partial={"dead_units", "gradient_spike", "loss_spike"}),
    "x_h_small_batch_noisy": dict(healthy=True, extra=True),
    "x_h_adamw_cosine_clip": dict(healthy=True, extra=True),
}

SCENARIOS = {}
DRY = False  # --dry: train without gradscope (to check that each scenario shows its fault)


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------------------------------
# data helpers (all on a torch.Generator seeded per scenario and seed)
# --------------------------------------------------------------------------------------------------
class Clusters:
    """Gaussian clusters in d dims, k classes (linearly separable-ish with overlap)."""

    def __init__(self, g, d=20, k=5, spread=1.0, sep=2.0):
        self.g, self.d, self.k, self.spread = g, d, k, spread
        self.centers = torch.randn(k, d, generator=g) * sep / math.sqrt(d) * 2

    def batch(self, n=128):
        y = torch.randint(0, self.k, (n,), generator=self.g)
        x = self.centers[y] + self.spread * torch.randn(n, self.d, generator=self.g) * 0.5
        return x, y


class RingTask:
    """Nonlinear 3-class task: class by the norm of the first 4 coordinates (needs hidden features)."""

    def __init__(self, g, d=20):
        self.g, self.d = g, d

    def batch(self, n=128):
        x = torch.randn(n, self.d, generator=self.g)
        r = x[:, :4].norm(dim=1)
        y = (r > 1.6).long() + (r > 2.3).long()  # ~ balanced thirds for chi(4)
        return x, y


def mlp(sizes, act=nn.ReLU, bias=True):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def fin(v):
    return v if (v is not None and math.isfinite(v)) else float("nan")


def train_loop(model, opt, log_dir, steps, step_fn, *, zero_grad=True, clip=None, lr_at=None):
    """Standard loop. step_fn(step) -> loss tensor (forward only). Returns list of float losses."""
    losses = []
    live = []
    import contextlib
    ctx = (contextlib.nullcontext(type("S", (), {"log": lambda self, **k: None})()) if DRY else
           gradscope.watch(model, opt, log_dir=log_dir, overwrite=True,
                           on_finding=lambda f: live.append((f.kind, f.severity))))
    with ctx as scope:
        for step in range(steps):
            if lr_at is not None:
                for gr in opt.param_groups:
                    gr["lr"] = lr_at(step)
            loss = step_fn(step)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if zero_grad:
                opt.zero_grad()
            scope.log(loss=loss)
            losses.append(float(loss.detach()))
    return losses, live


# --------------------------------------------------------------------------------------------------
# faulty scenarios
# --------------------------------------------------------------------------------------------------
@scenario
def lr_diverge(log_dir, g):
    """Regression MLP, SGD+momentum with lr 100x too high: loss blows up to Inf/NaN."""
    d = 16
    w_true = torch.randn(d, 1, generator=g)
    model = mlp([d, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)

    def step_fn(step):
        x = torch.randn(64, d, generator=g)
        y = torch.sin(x @ w_true) + 0.1 * x[:, :1] ** 2
        return F.mse_loss(model(x), y)

    return train_loop(model, opt, log_dir, 150, step_fn)


class RMSNormNoEps(nn.Module):
    """A hand-written RMS normalisation without eps: an all-zero feature row divides 0 by 0."""

    def forward(self, x):
        return x / x.pow(2).mean(dim=1, keepdim=True).sqrt()


class NanNet(nn.Module):
    def __init__(self, d=24, h=64, k=4):
        super().__init__()
        self.inp = nn.Linear(d, h, bias=False)
        self.act1 = nn.ReLU()
        self.mid_norm = RMSNormNoEps()
        self.hid = nn.Linear(h, h)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(h, k)

    def forward(self, x):
        return self.out(self.act2(self.hid(self.mid_norm(self.act1(self.inp(x))))))


@scenario
def nan_mid_layer(log_dir, g):
    """At step 60 a batch holds an all-zero (padding) sample: bias-free Linear -> ReLU -> 0, and
    the eps-less RMS norm in the middle computes 0/0 = NaN; SGD then spreads NaN to all weights."""
    data = Clusters(g, d=24, k=4)
    model = NanNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step_fn(step):
        x, y = data.batch(64)
        if step == 60:
            x[7] = 0.0
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 150, step_fn)


@scenario
def deep_sigmoid_vanish(log_dir, g):
    """20 Linear+Sigmoid layers, default init, SGD: early layers get ~no gradient."""
    data = Clusters(g, d=32, k=4)
    model = mlp([32] + [64] * 20 + [4], act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


@scenario
def deep_init_explode(log_dir, g):
    """20-layer ReLU MLP initialised N(0, 0.3^2) (~1.7x He scale per layer): activations and the
    gradients of early layers explode with depth; the user clips at 1.0 so it stays finite."""
    data = Clusters(g, d=32, k=4)
    model = mlp([32] + [64] * 20 + [4])
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.3, generator=g)
                m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 200, step_fn, clip=1.0)


@scenario
def dead_relu_bias(log_dir, g):
    """Hidden biases initialised to -3 (a copied 'gate bias' trick): almost every ReLU is dead."""
    data = Clusters(g, d=20, k=5)
    model = mlp([20, 128, 128, 128, 5])
    with torch.no_grad():
        for m in list(model)[:-1]:
            if isinstance(m, nn.Linear):
                m.bias.fill_(-3.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


@scenario
def input_x100_tanh(log_dir, g):
    """Tanh MLP fed raw, unnormalised features (scale ~100): the first tanh layer saturates (its
    output is ~sign(Wx)), which loses the magnitude the ring task needs."""
    data = RingTask(g)
    model = mlp([20, 64, 64, 64, 3], act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x * 100.0), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


@scenario
def forgot_zero_grad(log_dir, g):
    """Plain SGD loop without optimizer.zero_grad(): .grad accumulates over all steps."""
    data = Clusters(g, d=20, k=5)
    model = mlp([20, 64, 64, 5])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 200, step_fn, zero_grad=False)


class DetachNet(nn.Module):
    def __init__(self, d=20, h=64, k=5):
        super().__init__()
        self.lower = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.upper = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k))

    def forward(self, x):
        h = self.lower(x)
        feats = h.detach()  # bug: meant to log features, cut the graph instead
        return self.upper(feats)


@scenario
def detach_bug(log_dir, g):
    """.detach() in the middle of forward: the lower half never receives a gradient."""
    data = RingTask(g)
    model = DetachNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


class UnusedNet(nn.Module):
    def __init__(self, d=20, h=64, k=5):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h)
        self.skip_proj = nn.Linear(d, h)  # defined for a residual path that forward never uses
        self.head = nn.Linear(h, k)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.head(h)


@scenario
def unused_module(log_dir, g):
    """A registered submodule (skip_proj) never called in forward; otherwise a healthy run."""
    data = Clusters(g, d=20, k=5)
    model = UnusedNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


class BackboneHead(nn.Module):
    def __init__(self, d=20, h=128, feat=8, k=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                      nn.Linear(h, feat), nn.ReLU())
        self.head = nn.Linear(feat, k)

    def forward(self, x):
        return self.head(self.backbone(x))


@scenario
def frozen_backbone(log_dir, g):
    """Backbone left at requires_grad=False (random init, meant to be unfrozen); only the linear head
    trains on a task that needs learned features: the loss stays near chance."""
    data = RingTask(g)
    model = BackboneHead()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


class SeqRNN(nn.Module):
    """Input projection (the 'embedding' of a scalar sequence) -> recurrent layer -> head on the
    last time step."""

    def __init__(self, h=64, kind="lstm", out=1):
        super().__init__()
        self.inp = nn.Linear(1, 16)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](16, h, batch_first=True)
        self.head = nn.Linear(h, out)

    def forward(self, x):
        out, _ = self.rnn(self.inp(x))
        return self.head(out[:, -1])


@scenario
def rnn_explode(log_dir, g):
    """GRU whose recurrent weights were initialised orthogonal with gain 4 ('for longer memory'),
    sequences of 150 steps, SGD without clipping: the gradient through time explodes (1e4-1e7x at the
    first step), the update wrecks the cell and the model never learns (loss stays at chance)."""
    model = SeqRNN(h=64, kind="gru", out=2)
    with torch.no_grad():
        w = model.rnn.weight_hh_l0
        n = w.shape[1]
        for k in range(w.shape[0] // n):
            nn.init.orthogonal_(w[k * n:(k + 1) * n], gain=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    T = 150

    def step_fn(step):
        x = torch.randn(32, T, 1, generator=g)
        y = (x[:, :10, 0].sum(dim=1) > 0).long()  # needs memory of the early inputs
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 120, step_fn)


@scenario
def lr_tiny(log_dir, g):
    """SGD+momentum with lr 1e-7 (a typo for 1e-1): nothing moves."""
    data = Clusters(g, d=20, k=5)
    model = mlp([20, 128, 128, 5])
    opt = torch.optim.SGD(model.parameters(), lr=1e-7, momentum=0.9)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


# --------------------------------------------------------------------------------------------------
# healthy scenarios
# --------------------------------------------------------------------------------------------------
@scenario
def h_mlp_adam(log_dir, g):
    data = Clusters(g, d=20, k=5)
    model = mlp([20, 128, 128, 5])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 300, step_fn)


class SmallCNN(nn.Module):
    def __init__(self, k=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 4 * 4, k)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def bar_images(g, n):
    """16x16 noisy images holding one bar: horizontal, vertical, diagonal or anti-diagonal."""
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    pos = torch.randint(3, 13, (n,), generator=g)
    idx = torch.arange(16)
    for i in range(n):
        p = int(pos[i])
        c = int(y[i])
        if c == 0:
            x[i, 0, p, 2:14] += 1.0
        elif c == 1:
            x[i, 0, 2:14, p] += 1.0
        elif c == 2:
            x[i, 0, idx, idx] += 1.0
        else:
            x[i, 0, idx, 15 - idx] += 1.0
    return x, y


@scenario
def h_cnn_synth(log_dir, g):
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def step_fn(step):
        x, y = bar_images(g, 64)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


@scenario
def h_lstm_seq(log_dir, g):
    """LSTM regression: output the sum of the last 3 inputs of a 30-step sequence."""
    model = SeqRNN(h=32, kind="lstm")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    T = 30

    def step_fn(step):
        x = torch.randn(64, T, 1, generator=g)
        y = x[:, -3:, 0].sum(dim=1, keepdim=True)
        return F.mse_loss(model(x), y)

    return train_loop(model, opt, log_dir, 300, step_fn)


def toy_language(g, n, T, V):
    """Arithmetic progressions mod V with random start and stride 1..3: predictable after 2 tokens."""
    a = torch.randint(0, V, (n, 1), generator=g)
    d = torch.randint(1, 4, (n, 1), generator=g)
    return (a + d * torch.arange(T)) % V


@scenario
def h_gpt2_toy(log_dir, g):
    from transformers import GPT2Config, GPT2LMHeadModel
    V, T = 24, 32
    cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=4,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step_fn(step):
        ids = toy_language(g, 32, T, V)
        return model(input_ids=ids, labels=ids).loss

    return train_loop(model, opt, log_dir, 200, step_fn)


@scenario
def h_bert_cls(log_dir, g):
    """Tiny random-init BERT classifier: does the sequence contain token 5?"""
    from transformers import BertConfig, BertForSequenceClassification
    V, T = 30, 16
    cfg = BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=T + 2, num_labels=2)
    model = BertForSequenceClassification(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step_fn(step):
        tok = torch.randint(3, V, (32, T), generator=g)
        tok[:, 0] = 2  # [CLS]-like
        y = (tok[:, 1:] == 5).any(dim=1).long()
        return model(input_ids=tok, labels=y).loss

    return train_loop(model, opt, log_dir, 300, step_fn)


@scenario
def h_relu_sgd_momentum(log_dir, g):
    data = RingTask(g)
    model = mlp([20, 128, 128, 128, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 400, step_fn)


# ---- extras ----
@scenario
def x_lr_spike_dead(log_dir, g):
    """ReLU MLP trained fine with SGD lr 0.05; a schedule bug sets lr=5 for steps 100-104 (a warm
    restart with the wrong base lr): most ReLU units die and training stalls."""
    data = RingTask(g)
    model = mlp([20, 128, 128, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn,
                      lr_at=lambda s: 5.0 if 100 <= s < 105 else 0.05)


@scenario
def x_adam_lr_high(log_dir, g):
    """Adam with lr 0.1 (100x the usual 1e-3) on a ReLU MLP."""
    data = RingTask(g)
    model = mlp([20, 256, 256, 3])
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 250, step_fn)


@scenario
def x_h_small_batch_noisy(log_dir, g):
    """Healthy but noisy: batch 8 with 10% flipped labels, Adam 1e-3."""
    data = Clusters(g, d=20, k=5)
    model = mlp([20, 128, 128, 5])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step_fn(step):
        x, y = data.batch(8)
        flip = torch.rand(8, generator=g) < 0.1
        y = torch.where(flip, torch.randint(0, 5, (8,), generator=g), y)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, 400, step_fn)


@scenario
def x_h_adamw_cosine_clip(log_dir, g):
    """Healthy: AdamW 3e-3, 20 warmup steps then cosine decay, clip at 1.0, ring task."""
    data = RingTask(g)
    model = mlp([20, 128, 128, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    N = 400

    def lr_at(s):
        return 3e-3 * (s + 1) / 20 if s < 20 else 3e-3 * 0.5 * (1 + math.cos(math.pi * (s - 20) / (N - 20)))

    def step_fn(step):
        x, y = data.batch(128)
        return F.cross_entropy(model(x), y)

    return train_loop(model, opt, log_dir, N, step_fn, clip=1.0, lr_at=lr_at)


# --------------------------------------------------------------------------------------------------
# analysis and scoring
# --------------------------------------------------------------------------------------------------
def analyze(run_dir):
    cmd = [sys.executable, "-m", "gradscope", "analyze", run_dir, "--format", "json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    p2 = subprocess.run(cmd + ["--fail-on", "warning"], capture_output=True, text=True)
    try:
        rep = json.loads(p.stdout)
    except Exception:
        rep = None
    return rep, p.returncode, p2.returncode, p.stderr


def score(name, rep, losses):
    e = EXPECT[name]
    res = {}
    if rep is None:
        res.update(verdict="NO-JSON", ok=False)
        return res
    finds = rep.get("findings", [])
    byid = {f.get("id"): f for f in finds}
    head = byid.get(rep["summary"].get("headline")) if rep["summary"].get("headline") else None
    if head is None and finds:
        head = finds[0]
    roots = [f for f in finds if not f.get("caused_by")]
    warn_err = [f"{f['kind']}:{f['severity'][0].upper()}" for f in finds
                if f.get("severity") in ("warning", "error")]
    res["headline"] = f"{head['kind']}:{head['severity']}" if head else "-"
    res["head_kind"] = head["kind"] if head else None
    res["roots"] = [f"{f['kind']}:{f['severity'][0].upper()}" for f in roots]
    res["warn_err"] = warn_err
    res["verdict"] = rep["summary"].get("verdict")
    res["not_checked"] = rep["summary"].get("not_checked")
    if e["healthy"]:
        res["ok"] = not warn_err
        res["status"] = "OK" if res["ok"] else "FALSE-ALARM"
    else:
        ok = head is not None and head["kind"] in e["expect"] and head["severity"] in ("warning", "error", "info")
        if ok and e.get("origin"):
            org = (head.get("origin") or {}).get("layer") or ""
            res["origin"] = head.get("origin")
            ok = e["origin"] in org
            if not ok:
                res["status"] = "PARTIAL(origin)"
        res["ok"] = ok
        if ok:
            res["status"] = "OK" if head["severity"] != "info" else "OK(info)"
        elif "status" not in res:
            kinds = {f["kind"] for f in finds}
            if head is not None and head["kind"] in e["partial"]:
                res["status"] = "MISS(symptom)"
            elif kinds & e["expect"]:
                res["status"] = "MISS(expected kind present, not headline)"
            else:
                res["status"] = "MISS"
    return res


def loss_summary(losses):
    first = [v for v in losses[:5]]
    last = [v for v in losses[-10:]]
    f = sum(first) / len(first)
    l = sum(last) / len(last)
    n_nonfin = sum(1 for v in losses if not math.isfinite(v))
    return f, l, n_nonfin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/heldout2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--dry", action="store_true", help="train only, no gradscope (scenario check)")
    a = ap.parse_args()
    global DRY
    DRY = a.dry
    names = list(SCENARIOS) if not a.only else a.only.split(",")
    base = os.path.join(a.out, f"seed{a.seed}")
    os.makedirs(base, exist_ok=True)
    results = {}
    for name in names:
        run_dir = os.path.join(base, name)
        if os.path.exists(run_dir):
            shutil.rmtree(run_dir)
        torch.manual_seed(1000 * a.seed + sum(map(ord, name)))
        g = torch.Generator().manual_seed(1000 * a.seed + 7 + sum(map(ord, name)))
        t0 = time.time()
        err = None
        try:
            losses, live = SCENARIOS[name](run_dir, g)
        except Exception:  # a crash of the recording side is a finding of this test
            import traceback
            err = traceback.format_exc()
            losses, live = [float("nan")], []
        rec_s = time.time() - t0
        if DRY:
            f, l, nn_ = loss_summary(losses)
            marks = [round(losses[i], 4) for i in (0, 25, 50, 100, -1) if -len(losses) <= i < len(losses)]
            print(f"[{name}] dry loss {f:.4g} -> {l:.4g} (nonfinite {nn_}) {rec_s:.1f}s "
                  f"losses@[0,25,50,100,-1]={marks}", flush=True)
            if err:
                print(err)
            continue
        rep, rc, rc_fail, stderr = analyze(run_dir)
        r = score(name, rep, losses)
        f, l, nn_ = loss_summary(losses)
        r.update(name=name, expected=("healthy" if EXPECT[name]["healthy"] else
                                      "|".join(sorted(EXPECT[name]["expect"]))),
                 rc=rc, rc_fail_on_warning=rc_fail, loss0=f, loss1=l, nonfinite_losses=nn_,
                 rec_s=round(rec_s, 1), live=sorted(set(f"{k}:{s}" for k, s in live)),
                 record_error=err, analyze_stderr=stderr.strip()[-2000:])
        if rep is not None:
            with open(os.path.join(base, name + ".analyze.json"), "w") as fh:
                json.dump(rep, fh, indent=1)
        results[name] = r
        print(f"[{name}] {r.get('status')} head={r.get('headline')} roots={r.get('roots')} "
              f"warn/err={r.get('warn_err')} rc={rc}/{rc_fail} loss {f:.4g}->{l:.4g} "
              f"(nonfinite {nn_}) {rec_s:.1f}s", flush=True)
        if err:
            print(err, flush=True)
        if stderr.strip():
            print("  analyze stderr:", stderr.strip()[-500:], flush=True)
    if DRY:
        return
    path = os.path.join(base, "results.json")
    old = {}
    if a.only and os.path.exists(path):
        old = json.load(open(path))
    old.update(results)
    with open(path, "w") as fh:
        json.dump(old, fh, indent=1, default=str)

    print()
    hdr = f"{'scenario':22} {'expected':34} {'headline':30} {'status':14} rc  loss0 -> loss1   warnings/errors"
    print(hdr)
    print("-" * len(hdr))
    for name in names:
        r = results[name]
        print(f"{name:22} {r['expected'][:34]:34} {str(r.get('headline'))[:30]:30} "
              f"{str(r.get('status'))[:14]:14} {r['rc']}/{r['rc_fail_on_warning']} "
              f"{r['loss0']:.3g} -> {r['loss1']:.3g}  {','.join(r.get('warn_err') or [])}")
    for tag, sel in (("core", lambda n: not EXPECT[n].get("extra")), ("extras", lambda n: EXPECT[n].get("extra"))):
        faulty = [n for n in names if sel(n) and not EXPECT[n]["healthy"]]
        healthy = [n for n in names if sel(n) and EXPECT[n]["healthy"]]
        if faulty or healthy:
            print(f"{tag}: root cause correct: {sum(results[n]['ok'] for n in faulty)}/{len(faulty)}; "
                  f"healthy with warning/error: {sum(not results[n]['ok'] for n in healthy)}/{len(healthy)}")


if __name__ == "__main__":
    main()
