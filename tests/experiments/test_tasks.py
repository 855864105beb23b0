"""Data for the compare tasks: shapes, splits and the honest failure when a source is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gradscope.experiments import tasks


def test_spirals_split():
    d = tasks.load("spirals")
    assert d.x_train.shape == (2048, 2) and d.x_test.shape == (1024, 2) and d.classes == 2


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="iris comes with SciPy")
def test_iris_is_fishers_150_flowers_stratified():
    d = tasks.load("iris")
    assert d.x_train.shape == (120, 4) and d.x_test.shape == (30, 4) and d.classes == 3
    assert torch.bincount(d.y_test).tolist() == [10, 10, 10]
    assert torch.allclose(d.x_train.mean(0), torch.zeros(4), atol=1e-5)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    if importlib.util.find_spec("sklearn") is not None:
        assert tasks.load("digits").classes == 10
        return
    tasks._digits.cache_clear()
    with pytest.raises(tasks.TaskError, match="pip install scikit-learn"):
        tasks.load("digits")
