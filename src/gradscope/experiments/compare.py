"""``gradscope compare``: build the grid from the options, run it with a progress bar, write table and figures.

OUT/table.md, OUT/table.csv  the comparison (mean ± std over seeds); OUT/results.json the rows
OUT/*.png                    figures (experiments/plots.py)
OUT/<config>/                one gradscope run per configuration and seed, with its result.json
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradscope.clip.factory import CLIPPERS
from gradscope.experiments.grid import DESIGNS, FINETUNE_AXES, MLP_AXES, Config, expand
from gradscope.experiments.models import ACTIVATIONS, INITS
from gradscope.experiments.tasks import TASKS

ALL_ACTIVATIONS = list(ACTIVATIONS)
ALL_CLIPS = ["none", "norm", "value", "agc", "autoclip", "zclip"]
# The baseline (first value) of each axis comes first: He init, depth 16, no clipping.
MLP_DEFAULTS: dict[str, Any] = {
    "activation": ALL_ACTIVATIONS, "init": ["he", "xavier", "default"], "depth": [16, 4, 32],
    "clip": ALL_CLIPS, "lr": [3e-3], "seeds": 3, "steps": 300, "design": "sweep",
}
# --quick: the same sweeps at depth 16 only, 2 seeds, 100 steps (about a minute on a loaded 2-core CPU).
QUICK: dict[str, Any] = {**MLP_DEFAULTS, "depth": [16], "seeds": 2, "steps": 100}
FINETUNE_DEFAULTS: dict[str, Any] = {
    "regime": ["full", "top2", "frozen"], "clip": ["none", "norm"], "lr": [5e-5], "seeds": 2, "steps": 40,
    "design": "product",
}
OPTION_OF = {"activation": "--activations", "init": "--init", "depth": "--depth", "clip": "--clip",
             "lr": "--lr", "regime": "--regime"}


class CompareError(ValueError):
    """Bad compare options; the message names the option and the fix."""


@dataclass
class Spec:
    """The resolved grid: task, axes (first value = baseline), seeds, steps, design."""

    task: str
    axes: dict[str, list]
    seeds: int
    steps: int
    design: str
    base: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.axes.items()}

    def configs(self) -> list[Config]:
        return expand({"task": self.task, "steps": self.steps, **self.base}, self.axes,
                      list(range(self.seeds)), self.design)


def _split(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CompareError(f"{option} is empty: give a comma-separated list, e.g. {option} a,b")
    return list(dict.fromkeys(items))


def _names(text: str, option: str, known: list[str]) -> list[str]:
    items = _split(text, option)
    bad = [i for i in items if i not in known]
    if bad:
        raise CompareError(f"{option}: unknown {bad[0]!r}; choose from {', '.join(known)}")
    return items


def _numbers(text: str, option: str, kind: type, low: float, high: float) -> list:
    out = []
    for item in _split(text, option):
        try:
            value = kind(item)
        except ValueError:
            raise CompareError(f"{option}: {item!r} is not a{'n integer' if kind is int else ' number'}"
                               ) from None
        if not (math.isfinite(value) and low <= value <= high):
            raise CompareError(f"{option}: {item} is out of range; use {low:g} < value <= {high:g}"
                               if kind is float else f"{option}: {item} is out of range {low}..{high}")
        out.append(value)
    return out


def _regimes(text: str) -> list[str]:
    items = _split(text, "--regime")
    for item in items:
        if item not in ("frozen", "full") and not re.fullmatch(r"top[1-9][0-9]*", item):
            raise CompareError(f"--regime: unknown {item!r}; use frozen, full or topK (K layers unfrozen, "
                               "e.g. top2)")
    return items


def build_spec(task: str, options: dict[str, str | None], seeds: int | None, steps: int | None,
               design: str | None, quick: bool, backbone: str | None = None) -> Spec:
    """Resolve CLI text options (None = default) into a Spec; raises CompareError on bad input."""
    if task not in TASKS:
        raise CompareError(f"--task: unknown {task!r}; choose from {', '.join(TASKS)}")
    finetune = TASKS[task].kind == "finetune"
    axes_names = FINETUNE_AXES if finetune else MLP_AXES
    for axis, option in OPTION_OF.items():
        if options.get(axis) is not None and axis not in axes_names:
            raise CompareError(f"{option} does not apply to --task {task} (its axes: "
                               f"{', '.join(OPTION_OF[a] for a in axes_names)})")
    if quick and finetune:
        raise CompareError("--quick is the MLP preset; for fine-tuning use --steps and --seeds to shorten")
    defaults = FINETUNE_DEFAULTS if finetune else QUICK if quick else MLP_DEFAULTS
    parsers = {
        "activation": lambda t: _names(t, "--activations", ALL_ACTIVATIONS),
        "init": lambda t: _names(t, "--init", list(INITS)),
        "depth": lambda t: _numbers(t, "--depth", int, 1, 256),
        "clip": lambda t: _names(t, "--clip", sorted(CLIPPERS)),
        "lr": lambda t: _numbers(t, "--lr", float, 1e-12, 10.0),
        "regime": _regimes,
    }
    # Naming any axis means "compare these": the axes not named stay at their baseline value.
    named = any(options.get(a) is not None for a in axes_names)
    axes = {a: parsers[a](options[a]) if options.get(a) is not None
            else [defaults[a][0]] if named else list(defaults[a]) for a in axes_names}
    design = design or defaults["design"]
    if design not in DESIGNS:
        raise CompareError(f"--design: unknown {design!r}; choose from {', '.join(DESIGNS)}")
    base: dict[str, Any] = {}
    if finetune:
        from gradscope.experiments.finetune import resolve_backbone

        base["backbone"] = resolve_backbone(backbone)
        base["batch"] = 16
        from gradscope.experiments.finetune import BACKBONES

        too_deep = [r for r in axes["regime"] if r.startswith("top") and int(r[3:]) > BACKBONES[base["backbone"]]]
        if too_deep:
            raise CompareError(f"--regime {too_deep[0]}: backbone {base['backbone']} has only "
                               f"{BACKBONES[base['backbone']]} encoder layers")
    elif backbone is not None:
        raise CompareError(f"--backbone applies to --task finetune only, not --task {task}")
    else:
        from gradscope.experiments.train import WIDTH

        base["width"] = WIDTH
    return Spec(task, axes, seeds or defaults["seeds"], steps or defaults["steps"], design, base)


def run_compare(spec: Spec, out: Path, console: Any, tensorboard: bool = False,
                threads: int | None = 1) -> tuple[Any, list[dict[str, Any]], list[Path]]:
    """Run the grid (progress bar on ``console``), then write the table files and figures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gradscope.experiments.runner import run_grid

    configs = spec.configs()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[name]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"compare {spec.task}", total=len(configs), name="")

        def advance(cfg: Config, skipped: bool) -> None:
            progress.update(bar, advance=1, name=("skipped " if skipped else "") + cfg.dirname)

        outcome = run_grid(configs, out, tensorboard=tensorboard, threads=threads, on_progress=advance)
    outcome.seconds = time.perf_counter() - start
    rows, files = write_outputs(spec, outcome.results, out)
    return outcome, rows, files


def write_outputs(spec: Spec, results: list[dict[str, Any]], out: Path) -> tuple[list[dict], list[Path]]:
    """table.md, table.csv, results.json and the figures for the finished ``results``."""
    from gradscope.experiments import tables

    if not results:
        return [], []
    rows = tables.aggregate(results)
    notes = [describe(spec, len(results))]
    (out / "table.md").write_text(tables.markdown(rows, f"gradscope compare: {spec.task}", notes),
                                  encoding="utf-8")
    (out / "table.csv").write_text(tables.to_csv(rows), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=_json_default), encoding="utf-8")
    files = [out / "table.md", out / "table.csv"]
    try:
        from gradscope.experiments.plots import write_figures

        files += write_figures(results, spec.baseline, out)
    except ImportError:
        pass  # no matplotlib: the table is still written; the CLI says how to get the figures
    return rows, files


def _json_default(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else str(x)


def describe(spec: Spec, runs: int) -> str:
    info = TASKS[spec.task]
    axes = "; ".join(f"{k}: {', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vals)}"
                     for k, vals in spec.axes.items())
    extra = f", backbone {spec.base['backbone']}" if "backbone" in spec.base else (
        f", width {spec.base.get('width')}, Adam, batch 128" if "width" in spec.base else "")
    return (f"Task **{spec.task}** ({info.source}; target loss {info.target_loss:g}){extra}. "
            f"Design **{spec.design}** (baseline = first value of each axis) over {axes}; "
            f"{spec.seeds} seed(s), {spec.steps} steps; {runs} runs.")
