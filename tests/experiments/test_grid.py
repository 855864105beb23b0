"""Grid designs, config hashing and directory names."""

from __future__ import annotations

from gradscope.experiments.grid import Config, expand, varying

BASE = {"task": "spirals", "steps": 10, "width": 8}


def test_hash_is_stable_and_covers_every_field():
    a = Config("spirals", 0, 10, 1e-3, "none", "relu", "he", 4, 8)
    assert a.key == Config("spirals", 0, 10, 1e-3, "none", "relu", "he", 4, 8).key
    for other in (Config("spirals", 1, 10, 1e-3, "none", "relu", "he", 4, 8),
                  Config("spirals", 0, 11, 1e-3, "none", "relu", "he", 4, 8),
                  Config("spirals", 0, 10, 1e-3, "none", "relu", "he", 4, 8, batch=64)):
        assert other.key != a.key
    assert a.dirname == f"spirals-relu-he-d4-none-lr0.001-s0-{a.key}"
    assert Config.from_json(a.to_json()) == a


def test_product_is_every_combination_times_seeds():
    axes = {"activation": ["relu", "sigmoid"], "init": ["he"], "depth": [4, 8], "clip": ["none"], "lr": [1e-3]}
    configs = expand(BASE, axes, [0, 1, 2], "product")
    assert len(configs) == 2 * 2 * 3
    assert len({c.key for c in configs}) == len(configs)
    assert varying(configs) == ["activation", "depth"]


def test_sweep_varies_one_axis_around_the_baseline():
    axes = {"activation": ["relu", "sigmoid", "tanh"], "init": ["he", "xavier"], "depth": [16],
            "clip": ["none", "norm"], "lr": [1e-3]}
    configs = expand(BASE, axes, [0], "sweep")
    combos = [(c.activation, c.init, c.clip) for c in configs]
    assert combos == [("relu", "he", "none"), ("sigmoid", "he", "none"), ("tanh", "he", "none"),
                      ("relu", "xavier", "none"), ("relu", "he", "norm")]
