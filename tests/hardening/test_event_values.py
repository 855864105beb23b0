"""An event value that is not JSON is converted or dropped with a warning; the rest of the batch is
kept (item 14 of issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hardening_helpers import tiny_model, train

import gradscope


def test_one_bad_event_value_keeps_the_rest_of_the_batch(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.warns(RuntimeWarning, match=r"dropped value\(s\) \['handle'\]"):
        with gradscope.watch(model, opt, log_dir=tmp_path / "run", flush_every=4, tensorboard=False) as scope:
            train(model, opt, 1, scope=scope)
            scope.event("before", value=1)
            scope.event("metrics", loss=torch.tensor(0.25), per_class=torch.tensor([1.0, 2.0]),
                        count=np.int64(3), mean=np.float32(0.5), handle=object())
            scope.event("after", value=2)
            train(model, opt, 1, scope=scope)
    events = {e["kind"]: e for e in gradscope.load_run(tmp_path / "run").events}
    assert events["before"]["value"] == 1 and events["after"]["value"] == 2
    m = events["metrics"]
    assert m["loss"] == 0.25 and m["per_class"] == [1.0, 2.0] and m["count"] == 3 and m["mean"] == 0.5
    assert "handle" not in m
