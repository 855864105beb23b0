"""Each detector on real recorded runs: the runs it must flag, and healthy controls it must not."""

from __future__ import annotations

import json

import pytest

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
