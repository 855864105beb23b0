"""The textbook result the --quick grid must show: in a deep MLP, sigmoid's first-layer gradient is
orders of magnitude smaller than its last layer's, while the ReLU family with He init keeps them close."""

from __future__ import annotations

from gradscope.experiments.grid import expand
from gradscope.experiments.runner import run_grid


def test_sigmoid_vanishes_relu_family_with_he_does_not(tmp_path):
    axes = {"activation": ["relu", "leaky_relu", "elu", "sigmoid"], "init": ["he"], "depth": [12],
            "clip": ["none"], "lr": [3e-3]}
    configs = expand({"task": "spirals", "steps": 25, "width": 32}, axes, [0])
    ratio = {r["config"]["activation"]: r["metrics"]["grad_ratio"] for r in run_grid(configs, tmp_path).results}
    relu_family = [ratio["relu"], ratio["leaky_relu"], ratio["elu"]]
    assert all(1e-2 < r < 1e2 for r in relu_family), ratio
    assert ratio["sigmoid"] < 1e-3 * min(relu_family), ratio
