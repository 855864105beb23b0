"""Live diagnosis equals the offline one: on every pathology run of conftest.py, at every flush.

Each recipe of conftest.py (every session fixture taking only ``runs_dir``, so new pathologies join
by themselves) is recorded again with ``flush_every=10`` and a diagnosis at every flush. Every live
verdict must equal ``diagnose()`` of the finished run cut at that flush (the run as analyze would
have read it then), the final one ``diagnose(load_run(RUN))``, and nothing may be reported live that
the finished run does not confirm.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import gradscope
import gradscope.diagnose as diagnose_mod
from gradscope.diagnose import diagnose, live
from gradscope.diagnose.nonfinite import detect as detect_nonfinite
from gradscope.diagnose.select import select
from gradscope.run.format import Row
from gradscope.run.reader import Run

FLUSH = 10


def _load_recipes_module():  # noqa: ANN202
    """A private copy of this directory's conftest.py (its recipes, without pytest's registration)."""
    spec = importlib.util.spec_from_file_location("_live_recipes", Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


recipes_mod = _load_recipes_module()


def _recipes() -> dict[str, object]:
    out = {}
    for name, obj in vars(recipes_mod).items():
        fn = getattr(obj, "__wrapped__", None)
        if fn is not None and list(inspect.signature(fn).parameters) == ["runs_dir"] and name != "runs_dir":
            out[name] = fn
    return out


RECIPES = _recipes()


def _json(findings: list) -> list[dict]:
    return [f.to_json() for f in findings]


@pytest.fixture(scope="module")
def live_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every recipe recorded with live diagnosis at every flush: scope, run, verdicts, reported."""
    mp = pytest.MonkeyPatch()
    out: dict[str, dict] = {}
    verdicts: list[tuple[int, list[dict]]] = []
    real_watch, real_diagnose = gradscope.watch, diagnose_mod.diagnose

    def spy_diagnose(run: Run, config=None):  # noqa: ANN001, ANN202
        found = real_diagnose(run, config)
        verdicts.append((int(run.steps[-1]) if run.num_steps else -1, _json(found)))
        return found

    try:
        mp.setattr(live, "MIN_SECONDS", 0.0)
        mp.setattr(live, "BUDGET", float("inf"))  # a diagnosis at every flush
        mp.setattr(diagnose_mod, "diagnose", spy_diagnose)
        for name, recipe in RECIPES.items():
            rec: dict = {"reported": [], "scopes": []}

            def watch(*args, _rec=rec, **kw):  # noqa: ANN002, ANN003, ANN202
                kw["flush_every"] = FLUSH
                kw["on_finding"] = _rec["reported"].append
                scope = real_watch(*args, **kw)
                _rec["scopes"].append(scope)
                return scope

            mp.setattr(gradscope, "watch", watch)
            verdicts.clear()
            rec["run"] = recipe(tmp_path_factory.mktemp(name))
            rec["verdicts"] = list(verdicts)
            out[name] = rec
    finally:
        mp.undo()
    return out


def test_recipes_found():
    assert {"nan_forward_run", "inf_backward_run", "healthy_relu_adam", "spike_run"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_live_verdicts_equal_offline_diagnosis(live_runs, name):
    rec = live_runs[name]
    run = rec["run"]
    (scope,) = rec["scopes"]
    offline = _json(diagnose(run))
    assert _json(scope.findings()) == offline  # after close: what gradscope analyze says
    during, final = rec["verdicts"][:-1], rec["verdicts"][-1]
    assert final == (int(run.steps[-1]), offline)
    # Diagnosed live during the run. Not necessarily at every flush: a periodic diagnosis still running
    # at the next flush is (rightly) not started twice, so on a loaded machine some flushes are skipped.
    assert len({last for last, _ in during}) >= 2
    for last, found in during:
        assert found == _json(diagnose(select(run, (None, last + 1)))), f"live verdict at step {last}"
    reported_once_and_complete(rec["reported"], diagnose(run))
    if name.startswith("healthy"):  # no false alarm at any flush, not only at the end
        assert [f.kind for f in rec["reported"] if f.severity.value != "info"] == []


def reported_once_and_complete(reported: list, offline: list) -> None:
    """Each live report is new (no earlier report of the same kind about its layers at its severity),
    and every finding of the finished run was reported, at its final severity or above."""
    for i, g in enumerate(reported):
        earlier = [h for h in reported[:i] if live.same(g, h.kind, live.where(h))]
        assert all(h.severity.rank < g.severity.rank for h in earlier), f"{g.kind} reported twice"
    for f in offline:
        hits = [g for g in reported if live.same(f, g.kind, live.where(g))]
        assert hits and max(g.severity.rank for g in hits) >= f.severity.rank, f"{f.kind} never reported"


@pytest.mark.parametrize("name,planted", [("nan_forward_run", 30), ("inf_backward_run", 25)])
def test_nonfinite_is_reported_within_one_flush(live_runs, name, planted):
    run = live_runs[name]["run"]
    events = [e for e in run.events if e["kind"] == live.EVENT and e["finding"] == "nonfinite"]
    assert len(events) == 1
    assert events[0]["origin"]["step"] == planted
    assert planted <= events[0]["step"] < planted + FLUSH  # found at the flush after the NaN


def _chunks(run: Run, size: int):
    for a in range(0, run.num_steps, size):
        sl = slice(a, a + size)
        arrays = {"step": run.steps[sl]}
        arrays.update({k: v[sl] for k, v in run.metrics.items()})
        arrays.update({f"scalar/{k}": v[sl] for k, v in run.scalars.items()})
        yield arrays


def _flagged(run: Run, size: int) -> np.ndarray:
    check = live.NonfiniteCheck()
    return np.concatenate([check(c) for c in _chunks(run, size)] or [np.zeros(0, np.int64)])


@pytest.mark.parametrize("size", [1, 7, 100])
@pytest.mark.parametrize("name", ["nan_forward_run", "inf_backward_run", "healthy_relu_adam", "spike_run"])
def test_chunk_check_flags_exactly_what_the_detector_counts(request, name, size):
    run = request.getfixturevalue(name)
    flagged = _flagged(run, size)
    found = [f for f in detect_nonfinite(run, diagnose_mod.resolve_config()["nonfinite"]) if f.kind == "nonfinite"]
    if not found:
        assert flagged.size == 0
    else:
        assert flagged[0] == found[0].evidence["first_step"]
        assert flagged.size == found[0].evidence["nonfinite_steps"]


def _scalar_run(loss: np.ndarray, skipped: np.ndarray | None = None) -> Run:
    n = loss.shape[0]
    scalars = {"loss": loss.astype(np.float32), "grad_norm": np.ones(n, np.float32)}
    if skipped is not None:
        scalars["amp_skipped"] = skipped.astype(np.float32)
    width = {"param": 1, "act": 0, "flow": 0}  # one param row: a watched run, not a TensorBoard log
    metrics = {f"{k}/{m}": np.zeros((n, width[k]), np.float32) for k, ms in
               {"param": ("grad_norm", "grad_max", "grad_nonfinite", "weight_norm", "update_ratio"),
                "act": ("mean", "std", "zero_frac", "sat_frac", "nonfinite", "dead_frac"),
                "flow": ("norm", "nonfinite")}.items() for m in ms}
    rows = [Row("w", "param", "Linear", [2, 2], 0)]
    return Run(Path("."), {"format": "gradscope-run"}, rows, np.arange(n), metrics, scalars)


@pytest.mark.parametrize("first_nan", [0, 2, 3, 11])
@pytest.mark.parametrize("size", [1, 2, 5])
def test_chunk_check_follows_the_loss_nan_rule_across_chunks(first_nan, size):
    rng = np.random.default_rng(first_nan * 10 + size)
    loss = rng.random(20)
    loss[first_nan] = np.nan
    loss[rng.integers(first_nan, 20, 3)] = np.nan
    loss[15] = np.inf
    skipped = np.zeros(20)
    skipped[16] = 1
    loss[16] = np.nan  # an AMP-skipped step: never counted
    run = _scalar_run(loss, skipped)
    (f,) = [f for f in detect_nonfinite(run, diagnose_mod.resolve_config()["nonfinite"]) if f.kind == "nonfinite"]
    flagged = _flagged(run, size)
    assert flagged[0] == f.evidence["first_step"] and flagged.size == f.evidence["nonfinite_steps"]
    assert (16 not in flagged) and (15 in flagged)
    if first_nan < 3:  # a NaN in the first three steps means "not logged": only the Inf counts
        assert flagged.tolist() == [15]


def test_kinds_cover_every_detector():
    src = Path(diagnose_mod.__file__).parent
    kinds = set()
    for path in src.glob("*.py"):
        kinds |= set(re.findall(r'Finding\(\s*"([a-z_]+)"', path.read_text()))
    assert kinds and kinds <= live.KINDS, f"add {sorted(kinds - live.KINDS)} to gradscope.diagnose.live.KINDS"


def test_periodic_diagnosis_is_rate_limited_and_never_two_at_once(healthy_relu_adam, monkeypatch):
    """A fake clock: 300 flushes 0.1 s apart; each diagnosis "costs" 1 s of the clock."""
    run = healthy_relu_adam
    now = [0.0]
    running = []
    real = diagnose_mod.diagnose

    def costly(r, config=None):  # noqa: ANN001, ANN202
        running.append(1)
        assert len(running) == 1  # never two diagnoses at once
        now[0] += 1.0
        try:
            return real(r, config)
        finally:
            running.pop()

    monkeypatch.setattr(diagnose_mod, "diagnose", costly)
    d = live.LiveDiagnosis(run.path, clock=lambda: now[0])
    d.bind(lambda job: job(), lambda events: None)
    for _ in range(300):
        now[0] += 0.1
        d.write_chunk(next(_chunks(run, 10)))
        if d._periodic is not None:
            d._periodic.join()
    # At 5 s (MIN_SECONDS, ends at 6 s), then 1 s / BUDGET = 20 s later (26 s); the next would be at
    # 47 s, past the 32 s of the clock.
    assert d.diagnoses == 2
    d.finish()
    assert d.diagnoses == 3 and [f.to_json() for f in d.findings] == [f.to_json() for f in real(run)]


@pytest.mark.parametrize("end", [2.4, 1.78])
def test_plateau_message_says_whether_the_loss_rose(end):
    """A loss that ends a third higher is not "at its start value"; the change is signed as the loss's."""
    from gradscope.diagnose import plateau

    loss = np.concatenate([np.full(20, 1.8), np.linspace(1.8, end, 60), np.full(20, end)])
    f = plateau.detect(_scalar_run(loss), dict(plateau.DEFAULTS))[0]
    if end > 1.8:
        assert "ends higher than it started (1.8 -> 2.4, +33.3%)" in f.message
    else:
        assert "stays at its start value (1.8 -> 1.78, -1.1%)" in f.message
