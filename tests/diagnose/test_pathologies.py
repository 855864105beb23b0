"""Each detector on real recorded runs: the runs it must flag, and healthy controls it must not."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope.diagnose import Severity, diagnose
from gradscope.report.text import dumps, report_json

SPIKE_STEP = 120  # the step conftest.spike_run feeds a 300x batch

HEALTHY = ["healthy_relu_adam", "healthy_leaky", "healthy_conv", "healthy_tanh"]


def kinds(findings, severity=None):
    return {f.kind for f in findings if severity is None or f.severity == severity}


def one(findings, kind):
    got = [f for f in findings if f.kind == kind]
    assert len(got) == 1, [f.kind for f in findings]
    return got[0]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_runs_have_no_warning_or_error(name, request):
    findings = diagnose(request.getfixturevalue(name))
    assert [f for f in findings if f.severity != Severity.INFO] == []


def test_vanishing_in_deep_sigmoid_mlp(sigmoid_run):
    f = one(diagnose(sigmoid_run), "vanishing_gradient")
    assert f.severity == Severity.ERROR
    assert f.layers[0] == "0.weight"
    assert f.evidence["ratio_first_last"] < 1e-5
    assert 0 < f.evidence["decay_per_layer"] < 0.5
    assert f.steps == (0, 59)
    assert "ReLU" in f.remedy and "Xavier" in f.remedy
    roots = [g for g in diagnose(sigmoid_run) if g.caused_by is None]
    assert [g.kind for g in roots] == ["vanishing_gradient"]  # the stuck loss is its symptom


@pytest.mark.parametrize("name", ["exploding_init_run", "exploding_lr_run"])
def test_exploding(name, request):
    f = one(diagnose(request.getfixturevalue(name)), "exploding_gradient")
    assert f.severity == Severity.ERROR
    assert f.evidence["max_abs_grad"] > 65504
    assert "clip_grad_norm_" in f.remedy or "clipping" in f.remedy


def test_exploding_with_depth_from_init(exploding_init_run):
    f = one(diagnose(exploding_init_run), "exploding_gradient")
    assert f.evidence["flow_ratio_first_last"] > 1e3
    assert f.steps[0] == 0


def test_exploding_over_time_from_lr_suggests_max_norm(exploding_lr_run):
    f = one(diagnose(exploding_lr_run), "exploding_gradient")
    assert f.evidence["growth_over_time"] > 1e3
    clip = f.evidence["suggested_max_norm"]
    assert clip is not None and clip > 0
    assert f"max_norm={clip:.3g}" in f.remedy


def test_dead_units_from_negative_bias(dead_run):
    findings = diagnose(dead_run)
    f = one(findings, "dead_units")
    assert f.layers == ["3"]
    assert f.severity == Severity.ERROR
    assert f.evidence["dead_frac_median"] == 1.0
    assert "LeakyReLU" in f.remedy
    assert "vanishing_gradient" not in kinds(findings)


def test_nan_forward_origin_is_exact(nan_forward_run):
    f = one(diagnose(nan_forward_run), "nonfinite")
    assert f.severity == Severity.ERROR
    assert f.origin["layer"] == "2" and f.origin["step"] == 30 and f.origin["phase"] == "forward"
    assert f.steps[0] == 30
    assert "NaNAt" in f.message and "detect_anomaly" in f.remedy


def test_inf_backward_origin_is_the_producer(inf_backward_run):
    f = one(diagnose(inf_backward_run), "nonfinite")
    # The flow into "1" (and "0") is Inf, the flow into "2"'s own output is finite: "2" produced it.
    assert f.origin == {"layer": "2", "step": 25, "phase": "backward", "module_type": "InfGradAt"}
    assert f.evidence["act_rows_nonfinite"] == 0


def test_unused_branch(unused_run):
    findings = diagnose(unused_run)
    f = one(findings, "unused_parameter")
    assert f.layers == ["unused.weight", "unused.bias"]
    assert f.severity == Severity.WARNING
    assert f.evidence["module_never_ran"] == 2
    assert kinds(findings, Severity.ERROR) == set()


def test_frozen_backbone_is_info_only(frozen_run):
    findings = diagnose(frozen_run)
    f = one(findings, "frozen_parameters")
    assert f.severity == Severity.INFO
    assert f.layers == ["0.*"]
    assert f.evidence["frozen_params"] == 6
    assert [g for g in findings if g.severity != Severity.INFO] == []


def test_spike_at_the_huge_batch(spike_run):
    spikes = [f for f in diagnose(spike_run) if f.kind == "gradient_spike"]
    assert [f.steps for f in spikes] == [(SPIKE_STEP, SPIKE_STEP)]
    ev = spikes[0].evidence
    assert ev["step"] == SPIKE_STEP and ev["z"] >= 6 and ev["factor_over_median"] >= 5
    assert "ZClip" in spikes[0].remedy and "AutoClip" in spikes[0].remedy


def test_saturated_tanh(saturated_run):
    f = one(diagnose(saturated_run), "saturation")
    assert f.evidence["sat_frac_median"] >= 0.3
    assert "ReLU" in f.remedy and "Xavier" in f.remedy


def test_update_ratio_thresholds_apply_to_real_runs(healthy_relu_adam):
    # A healthy Adam run sits near 1e-3; squeezing the allowed band flags it on both sides.
    low = diagnose(healthy_relu_adam, {"update_ratio.low": 0.5})
    high = diagnose(healthy_relu_adam, {"update_ratio": {"high": 1e-6}})
    assert {f.kind for f in low} == {"update_ratio"} and "tiny" in low[0].message
    assert {f.kind for f in high} == {"update_ratio"} and "large" in high[0].message


@pytest.mark.parametrize("name", ["nan_forward_run", "exploding_lr_run", "sigmoid_run", "frozen_run"])
def test_json_is_strict_and_follows_the_contract(name, request):
    run = request.getfixturevalue(name)
    payload = json.loads(dumps(report_json(run, diagnose(run))))
    assert payload["schema"] == 2 and payload["summary"]["steps"] == run.num_steps
    for f in payload["findings"]:
        assert set(f) >= {"id", "kind", "severity", "layers", "steps", "evidence", "message", "remedy",
                          "caused_by", "consequences"}
        assert f["severity"] in ("info", "warning", "error")
        assert ("origin" in f) == (f["kind"] == "nonfinite")


def _fit(path, model: nn.Module, opt: torch.optim.Optimizer, steps: int,
         loss_at: Callable[[int], torch.Tensor], lr_at: Callable[[int], float] | None = None) -> gradscope.Run:
    """The usual loop under watch(): ``loss_at(step)`` is the step's forward and loss."""
    torch.set_num_threads(1)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False) as scope:
        for t in range(steps):
            if lr_at is not None:
                for group in opt.param_groups:
                    group["lr"] = lr_at(t)
            loss = loss_at(t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            scope.log(loss=loss)
    return gradscope.load_run(path)


def _train(path, model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int = 30,
           batch: int = 32) -> gradscope.Run:
    """AdamW on random batches of (x, y), cross-entropy."""
    g = torch.Generator().manual_seed(0)

    def loss_at(t: int) -> torch.Tensor:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        return nn.functional.cross_entropy(model(x[idx]), y[idx])

    return _fit(path, model, torch.optim.AdamW(model.parameters(), lr), steps, loss_at)


class _Branches(nn.Module):
    """``body`` then a branch: ``"ignored"``, its output computed and dropped (a pooler when the hidden
    states are pooled by hand); ``"detached"``, the body's output detached before the head (a cut)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.pool = nn.Sequential(nn.Linear(32, 32), nn.Tanh())
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.mode == "ignored":
            self.pool(h)  # computed, never used
            return self.head(h)
        return self.head(self.pool(h.detach()))


@pytest.mark.parametrize("mode", ["ignored", "detached"])
def test_an_ignored_output_is_info_a_gradient_cut_warns(mode, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(512, 2)
    findings = diagnose(_train(tmp_path / "run", _Branches(mode), x, (x[:, 0] > 0).long(), 1e-2))
    f = one(findings, "unused_parameter")
    if mode == "ignored":
        assert f.severity == Severity.INFO and f.layers == ["pool.0.weight", "pool.0.bias"]
        assert f.evidence["modules"] == ["pool.0"] and "never reached the loss" in f.message
    else:  # everything before the detach starves: a bug, whatever ran after it
        assert f.severity == Severity.WARNING
        assert f.layers == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]


def test_bert_pooler_unused_by_mean_pooling_is_not_a_warning(tmp_path):
    """A BERT fine-tune that pools the hidden states itself (sentence-transformers style) leaves the
    pretrained pooler without gradients: info, never a warning on a healthy run."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)

    class MeanPooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = transformers.BertModel(cfg)
            self.head = nn.Linear(32, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(input_ids=ids).last_hidden_state.mean(1))

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (256, 12), generator=g)
    y = ((ids < 30).float().mean(1) > 0.5).long()  # a bag-of-words label: mean pooling can learn it
    run = _train(tmp_path / "run", MeanPooled(), ids, y, 3e-3, steps=40)
    loss = run.scalars["loss"]
    assert loss[-5:].mean() < 0.8 * loss[:5].mean()  # it learns: a healthy run
    findings = diagnose(run)
    f = one(findings, "unused_parameter")
    assert f.severity == Severity.INFO
    assert f.layers == ["backbone.pooler.dense.weight", "backbone.pooler.dense.bias"]
    assert [g.kind for g in findings if g.severity != Severity.INFO] == []


def _clusters_run(path, seed: int, bad_step: int | None = None) -> gradscope.Run:
    """A 20-128-128-5 ReLU MLP with Adam on Gaussian clusters, 300 steps: it converges (loss ~1e-3);
    ``bad_step`` feeds one mislabelled batch there (every label shifted by one class)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(5, 20, generator=g) * 2 / 20 ** 0.5 * 2
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 5))

    def loss_at(t: int) -> torch.Tensor:
        y = torch.randint(0, 5, (128,), generator=g)
        x = centers[y] + 0.5 * torch.randn(128, 20, generator=g)
        return nn.functional.cross_entropy(model(x), (y + 1) % 5 if t == bad_step else y)

    return _fit(path, model, torch.optim.Adam(model.parameters(), lr=1e-3), 300, loss_at)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spikes_of_a_converged_model_are_info(seed, tmp_path):
    """Late in a run whose loss fell to ~0.1 % of its start, a few hard examples make the (tiny) norm
    jump 5-14x its median while it stays 10x below the starting norm: noise, not a health problem."""
    run = _clusters_run(tmp_path / "run", seed)
    loss = run.scalars["loss"]
    assert loss[-10:].mean() < 0.01 * loss[:10].mean()
    findings = diagnose(run)
    assert [f.kind for f in findings if f.severity != Severity.INFO] == []


def test_a_bad_batch_on_a_converged_model_still_warns(tmp_path):
    run = _clusters_run(tmp_path / "run", 0, bad_step=250)
    f = [f for f in diagnose(run) if f.kind == "gradient_spike" and f.severity != Severity.INFO]
    assert [x.steps[0] for x in f] == [250]


def _regression_run(path, seed: int, lr: float) -> gradscope.Run:
    """A 16-64-64-1 ReLU MLP regressing a smooth target with SGD + momentum, 60 steps."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 1, generator=g)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def loss_at(t: int) -> torch.Tensor:
        x = torch.randn(64, 16, generator=g)
        return nn.functional.mse_loss(model(x), torch.sin(x @ w) + 0.1 * x[:, :1] ** 2)

    return _fit(path, model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), 60, loss_at)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_diverging_from_its_first_updates_is_a_learning_rate_root(seed, tmp_path):
    """SGD at lr 2: moderate gradients at step 0, then each update overshoots further (weights 50x,
    loss 1e4x by step 20), the ReLUs die and the gradients explode. The per-step update ratio never looks
    extreme (the weights grow as fast as the updates): the root is still the learning rate."""
    findings = diagnose(_regression_run(tmp_path / "run", seed, lr=2.0))
    head = findings[0]
    assert head.kind == "learning_rate" and head.severity == Severity.ERROR
    assert "diverges from its first updates" in head.message
    assert all(f.caused_by == head.id for f in findings[1:] if f.severity == Severity.ERROR)
    assert all("#" not in f.message for f in findings)  # no bare index pattern shown as a "role"


def test_sgd_at_a_sane_learning_rate_is_not_flagged(tmp_path):
    findings = diagnose(_regression_run(tmp_path / "run", 0, lr=0.01))
    assert "learning_rate" not in kinds(findings)
    assert [f.kind for f in findings if f.severity != Severity.INFO] == []


def _epochs_run(path, forget_train: bool, layers: list[nn.Module]) -> gradscope.Run:
    """4 epochs of 10 steps, each followed by a validation pass in eval mode (grad enabled, as a loop
    that forgets torch.no_grad() has it); ``forget_train``: model.train() only before the first epoch."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(512, 10)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    g = torch.Generator().manual_seed(0)
    with gradscope.watch(model, opt, log_dir=path, tensorboard=False) as scope:
        for epoch in range(4):
            if epoch == 0 or not forget_train:
                model.train()
            for _ in range(10):
                idx = torch.randint(0, 512, (32,), generator=g)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                scope.log(loss=loss)
            model.eval()
            model(x[:64]).sum()  # validation
    return gradscope.load_run(path)


def _mode_layers() -> list[nn.Module]:
    return [nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 3)]


def test_training_on_in_eval_mode_after_validation_warns(tmp_path):
    run = _epochs_run(tmp_path / "run", True, _mode_layers())
    f = one(diagnose(run), "eval_mode")
    assert f.severity == Severity.WARNING and f.steps == (10, 39)
    assert f.evidence["steps_in_eval_mode"] == 30 and f.evidence["module_types"] == ["BatchNorm1d", "Dropout"]
    assert f.layers == ["2", "4"] and "model.train()" in f.remedy
    # The steps trained in eval mode are still recorded (from the second one: the first optimizer
    # step in eval mode is what tells the Scope that eval passes train).
    assert np.isfinite(run.metric("act", "mean")[11:]).all()


def test_a_loop_that_calls_train_after_validation_is_clean(tmp_path):
    run = _epochs_run(tmp_path / "run", False, _mode_layers())
    assert (run.scalars["model_eval_mode"] == 0).all()
    assert "eval_mode" not in kinds(diagnose(run))
    assert np.isfinite(run.metric("act", "mean")).all()


def test_eval_mode_without_mode_dependent_layers_is_info(tmp_path):
    run = _epochs_run(tmp_path / "run", True, [nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)])
    f = one(diagnose(run), "eval_mode")
    assert f.severity == Severity.INFO and "no dropout or batch norm" in f.message


def test_dead_layers_after_a_fully_dead_one_are_its_consequences(tmp_path):
    """Every ReLU's bias at -3: the first layer is all dead, so every later one sees a constant and
    dies with it. One root (the first dead layer), not one error per layer."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, o in ((10, 32), (32, 32), (32, 32)):
        lin = nn.Linear(i, o)
        nn.init.constant_(lin.bias, -3.0)
        layers += [lin, nn.ReLU()]
    x = torch.randn(512, 10)
    model = nn.Sequential(*layers, nn.Linear(32, 3))
    findings = diagnose(_train(tmp_path / "run", model, x, (x[:, 0] > 0).long(), 1e-3))
    dead = [f for f in findings if f.kind == "dead_units"]
    assert [f.layers for f in dead] == [["1"], ["3"], ["5"]]
    assert dead[0].caused_by is None and findings[0] is dead[0]
    assert [f.caused_by for f in dead[1:]] == [dead[0].id, dead[0].id]


def _scheduled_run(path, lr_at) -> gradscope.Run:
    """A ReLU MLP on Gaussian clusters, SGD + momentum, 160 steps, lr set by ``lr_at(step)``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 20, generator=g) * 0.3  # overlapping: the loss stays near 0.5
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))

    def loss_at(t: int) -> torch.Tensor:
        y = torch.randint(0, 5, (64,), generator=g)
        return nn.functional.cross_entropy(model(centers[y] + torch.randn(64, 20, generator=g)), y)

    opt = torch.optim.SGD(model.parameters(), lr=lr_at(0), momentum=0.9)
    return _fit(path, model, opt, 160, loss_at, lr_at)


def test_an_lr_jump_that_breaks_the_run_is_the_root(tmp_path):
    """lr 0.05 -> 5 for steps 100-104 (a schedule bug): the spikes, dead units and plateau after it
    are its consequences, and the headline names the jump."""
    findings = diagnose(_scheduled_run(tmp_path / "run", lambda t: 5.0 if 100 <= t < 105 else 0.05))
    head = findings[0]
    assert head.kind == "learning_rate" and head.evidence["jump_step"] == 100
    assert head.evidence["jump_factor"] == pytest.approx(100.0)
    assert all(f.caused_by == head.id for f in findings[1:] if f.steps[0] >= 100)


@pytest.mark.parametrize("schedule", ["warmup-cosine", "survived-10x"])
def test_lr_schedules_that_do_not_break_the_run_are_not_flagged(schedule, tmp_path):
    import math

    def warmup_cosine(t: int) -> float:
        return 0.05 * min(1.0, t / 20) * 0.5 * (1 + math.cos(math.pi * t / 160))

    lr_at = warmup_cosine if schedule == "warmup-cosine" else (lambda t: 0.001 if t < 80 else 0.01)
    findings = diagnose(_scheduled_run(tmp_path / "run", lr_at))
    assert "learning_rate" not in kinds(findings)
    assert [f.kind for f in findings if f.severity != Severity.INFO] == []


def test_a_model_in_eval_mode_from_the_first_step_is_info(tmp_path):
    """from_pretrained returns a model in eval mode; a loop that never calls train() fine-tunes without
    dropout, which usually trains fine and may be meant: info, not the mid-run switch's warning."""
    torch.manual_seed(0)
    model = nn.Sequential(*_mode_layers())
    model.eval()
    x = torch.randn(512, 10)
    findings = diagnose(_train(tmp_path / "run", model, x, (x[:, 0] > 0).long(), 1e-3))
    f = one(findings, "eval_mode")
    assert f.severity == Severity.INFO and not f.evidence["switched_mid_run"]
    assert "from_pretrained" in f.message


def test_pretrained_minilm_at_lr_1e_2_is_a_learning_rate_root(recorded):
    """AdamW 1e-2 on the pretrained MiniLM: first updates of ~0.15 of the weights and a loss that
    doubles; the Post-LN-style vanishing and the pooler's saturation that follow are its symptoms."""
    findings = diagnose(recorded("minilm_lr_overshoot"))
    head = findings[0]
    assert head.kind == "learning_rate" and "overshoot" in head.message
    assert 0.1 <= head.evidence["early_update_ratio_max_median"] < 0.5 and head.evidence["early_loss_rise"] >= 2
    assert all(f.caused_by == head.id for f in findings[1:] if f.severity != Severity.INFO)


def test_a_backbone_left_in_eval_mode_inside_a_training_model_is_info(tmp_path):
    """from_pretrained's backbone wrapped in a model that trains: the wrapper is in train mode, the
    backbone's dropout is off. Info (frozen batch norm on purpose looks the same)."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.Dropout(0.3))
    backbone.eval()
    model = nn.Sequential(backbone, nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(512, 10)
    run = _train(tmp_path / "run", model, x, (x[:, 0] > 0).long(), 1e-3)
    assert (run.scalars["model_eval_mode"] == 0).all() and (run.scalars["eval_mode_layers"] == 1).all()
    f = one(diagnose(run), "eval_mode")
    assert f.severity == Severity.INFO and f.evidence["eval_fraction_median"] == 1.0
    assert "model.train()" in f.remedy


def test_a_symptoms_fix_names_its_root_first(tmp_path):
    """Under a learning-rate root, the dead units' own fix (LeakyReLU, init) is not the first thing to do."""
    findings = diagnose(_regression_run(tmp_path / "run", 0, lr=2.0))
    head = findings[0]
    for f in findings[1:]:
        if f.caused_by:
            assert f.remedy.startswith(f"First fix {head.id} (learning_rate): this follows from it. Then: ")
    assert not head.remedy.startswith("First fix")
