"""Table metrics and their aggregation over seeds."""

from __future__ import annotations

import math

import numpy as np

from gradscope.experiments import tables
from gradscope.experiments.summary import steps_to_target


def test_steps_to_target_uses_the_trailing_mean():
    loss = np.array([1.0] * 5 + [0.0] * 20)
    # 10-step trailing mean (earlier steps count as the first): first <= 0.35 at index 11 (3/10)
    assert steps_to_target(loss, 0.35) == 12
    assert steps_to_target(np.ones(30), 0.3) is None
    assert steps_to_target(np.zeros(0), 0.3) is None


def _result(seed, act, loss, ratio, reached):
    cfg = {"task": "spirals", "seed": seed, "steps": 10, "lr": 1e-3, "clip": "none", "activation": act,
           "init": "he", "depth": 4, "width": 8, "batch": 128, "regime": None, "backbone": None}
    return {"config": cfg, "run": f"r{seed}{act}", "final": {"train_loss": loss, "test_acc": 0.5},
            "metrics": {"grad_ratio": ratio, "steps_to_target": reached, "dead_frac": None, "sat_frac": 0.1,
                        "spikes": 1, "clip_rate": 0.0, "findings": 2}}


def test_aggregate_mean_std_and_geometric_ratio():
    results = [_result(0, "relu", 0.2, 1e-2, 5), _result(1, "relu", 0.4, 1e-4, None),
               _result(0, "sigmoid", 0.7, 1e-9, None)]
    rows = tables.aggregate(results)
    assert [r["config"]["activation"] for r in rows] == ["relu", "sigmoid"]
    relu = rows[0]
    assert relu["seeds"] == 2
    assert math.isclose(relu["train_loss"]["mean"], 0.3) and math.isclose(relu["train_loss"]["std"],
                                                                           np.std([0.2, 0.4], ddof=1))
    assert math.isclose(relu["grad_ratio"]["mean"], 1e-3)  # geometric mean of 1e-2 and 1e-4
    header, body = tables.cells(rows)
    assert header[0] == "activation"
    assert body[0][header.index("steps→target")] == "5 (1/2)"
    assert body[1][header.index("steps→target")] == "never"
    assert body[0][header.index("dead units")] == "–"
    md = tables.markdown(rows, "t")
    assert "| relu |" in md and "1e-09" in md
    csv = tables.to_csv(rows).splitlines()
    assert csv[0].startswith("task,seed,") is False and "grad_ratio_mean" in csv[0] and len(csv) == 3
