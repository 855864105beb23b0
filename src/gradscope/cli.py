"""The ``gradscope`` command line: analyze, demo (and, as they land, compare and export)."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import click

from gradscope import __version__
from gradscope.run.reader import RunError

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT = 0, 1, 2


def _console(stderr: bool = False):  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def fail(message: str) -> None:
    """Print a one-line error naming the problem and the fix, and exit with code 2."""
    _console(stderr=True).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="gradscope")
def main() -> None:
    """gradscope: gradient-health diagnostics for PyTorch training runs.

    Record a run with gradscope.watch(model, optimizer, log_dir=RUN), then inspect it here.
    """
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 file or row name prints as an escape
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


MAX_DEPTH = 4  # how deep analyze looks for runs inside a directory (an output_dir, a sweep root)
MAX_ENTRIES = 20_000  # directory entries looked at, at most: `analyze /` must not walk the whole disk


def _find_runs(root: Path) -> tuple[list[Path], list[Path]]:
    """Gradscope run directories (holding manifest.json) and foreign TensorBoard log directories
    (holding event files, outside any gradscope run) at or below ``root``, breadth first, sorted.
    Raises RunError for an event file that is not a regular file (a FIFO would hang the reader)."""
    from gradscope.run import format as fmt

    runs, logs = [], []
    todo, seen = collections.deque([(root, 0)]), 0
    while todo:
        path, depth = todo.popleft()
        try:
            if (path / fmt.MANIFEST).is_file():
                runs.append(path)  # a run's own tb/ mirror is part of it, not a foreign log
                continue
            with os.scandir(path) as it:
                children = sorted(it, key=lambda e: e.name)
            events = [c for c in children if c.name.startswith("events.out.tfevents.")]
            bad = [c.path for c in events if not c.is_file()]
        except OSError:  # unreadable (permissions, /proc): not a run
            continue
        seen += len(children)
        if seen > MAX_ENTRIES:
            break
        if bad:
            raise RunError(f"{bad[0]} is not a regular file (a FIFO or a device?): gradscope reads only "
                           "regular TensorBoard event files; remove it")
        if events:
            logs.append(path)
        if depth < MAX_DEPTH:
            todo.extend((Path(c.path), depth + 1) for c in children if c.is_dir(follow_symlinks=False))
    return sorted(runs), sorted(logs)


def _expand(path: Path) -> list[tuple[str, Path]]:
    """What RUN names: itself when it is a run; else every gradscope run inside it (a Trainer's
    output_dir, a directory of runs); else every TensorBoard log inside it."""
    from gradscope.run import format as fmt

    if not path.is_dir() or os.path.lexists(path / fmt.MANIFEST):
        return [("run", path)]
    runs, logs = _find_runs(path)
    if runs:
        return [("run", r) for r in runs]
    if logs:
        return [("tensorboard", d) for d in logs]
    return [("run", path)]  # load_run names the problem


def _load_one(kind: str, path: Path):  # noqa: ANN202 (Run, imported lazily)
    """A gradscope run directory, or the scalars of a TensorBoard log written by another tool."""
    from gradscope._optional import MissingDependencyError
    from gradscope.run.reader import load_run

    if kind == "tensorboard":
        from gradscope.run.tbread import TAG_RULES, load_tensorboard

        try:
            run = load_tensorboard(path)
        except MissingDependencyError as exc:
            fail(str(exc))
        if not run.manifest["config"]["recognised"]:
            tags = sorted(run.manifest["config"]["tags"].values())
            fail(f"{path}: nothing checked: none of its TensorBoard tags {tags[:8]} is a training loss or "
                 f"gradient norm gradscope recognises ({', '.join(n for n, _ in TAG_RULES[:2])}, e.g. train/loss, "
                 "train_loss, grad_2.0_norm_total); log one of those, or record the run with gradscope.watch()")
        return run
    return load_run(path)


def _load_runs(paths: tuple[Path, ...]) -> list:  # noqa: ANN202 (Run, imported lazily)
    """Load every run or exit 2 naming the bad one; reader warnings (torn chunks...) go to stderr.

    A directory that is not itself a run is searched for the runs inside it, each analysed and named."""
    import warnings

    runs = []
    for given in paths:
        try:
            found = _expand(given)
        except RunError as exc:
            fail(str(exc))
        for kind, path in found:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    runs.append(_load_one(kind, path))
            except RunError as exc:
                fail(str(exc))
            except OSError as exc:
                fail(f"{path}: cannot be read ({exc}); check the path and its permissions")
            for w in caught:
                _console(stderr=True).print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
    return runs


MAX_CONFIG_BYTES = 1 << 20


def _check_config_file(path: Path) -> None:
    """--config must be a small regular file: a FIFO would block, /dev/zero would never end."""
    from gradscope.run.npyfile import open_regular

    try:
        fd, size = open_regular(path)
    except (OSError, ValueError) as exc:
        fail(f"--config {path}: cannot be read ({exc}); pass a JSON or TOML file")
    os.close(fd)
    if size > MAX_CONFIG_BYTES:
        fail(f"--config {path} is {size} bytes; a threshold file is a few lines of JSON or TOML")


def _analyze_config(sets: tuple[str, ...], config: Path | None) -> dict:
    """Thresholds from --config FILE then --set KEY=VALUE (later wins); exit 2 on any bad key."""
    from gradscope.diagnose import resolve_config
    from gradscope.diagnose.config import ConfigError, flatten, load_file, parse_set

    if config is not None:
        _check_config_file(config)
    try:
        overrides = flatten(load_file(config)) if config is not None else {}
        overrides.update(parse_set(sets))
        return resolve_config(overrides)
    except ConfigError as exc:
        fail(str(exc))
    raise AssertionError  # unreachable: fail() exits


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="text: rich report; json: the findings contract (schema 2; a list "
              "of objects for several runs); markdown: for issues and PRs.")
@click.option("--plots", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write PNG figures to this directory (one sub-directory per run for several runs).")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write one self-contained HTML report (every RUN side by side) to this file.")
@click.option("--fail-on", type=click.Choice(["warning", "error"]), default=None,
              help="Exit with code 1 when a finding at this severity or worse is found (CI gate).")
@click.option("--steps", "steps_text", default=None, metavar="A:B",
              help="Only steps A <= step < B (either side may be empty: 100:, :500).")
@click.option("--layers", multiple=True, metavar="GLOB",
              help="Only rows whose name matches GLOB (repeatable), e.g. --layers 'encoder.*'.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a threshold, e.g. --set vanishing.ratio=1e-4 (repeatable).")
@click.option("--config", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Thresholds from a JSON or TOML file: {\"vanishing\": {\"ratio\": 1e-4}}.")
def analyze(runs: tuple[Path, ...], fmt: str, plots: Path | None, html_out: Path | None, fail_on: str | None,
            steps_text: str | None, layers: tuple[str, ...], sets: tuple[str, ...],
            config: Path | None) -> None:
    """Diagnose recorded RUN directories: verdict, findings with fixes, gradient norms by depth.

    A RUN that is not itself a run directory is searched: every gradscope run inside it is analysed
    and named (a Trainer's output_dir holds <output_dir>/gradscope; a sweep holds many). Without a
    gradscope run inside, its TensorBoard logs of another tool (a transformers Trainer's train/loss,
    train/grad_norm; Lightning's train_loss, grad_2.0_norm_total) get the checks that need no
    per-layer statistics (gradient and loss spikes, explosion, NaN/Inf); exit 2 when none of their
    tags is one gradscope recognises (nothing checked).

    Exit code: 0 normally, 1 when --fail-on is met, 2 for bad input (and for a --steps range or a
    --layers glob that selects nothing: nothing would be checked).
    """
    from gradscope.diagnose import diagnose
    from gradscope.diagnose.select import empty_selection, parse_steps, select
    from gradscope.report.text import dumps, render_markdown, render_text, report_json

    try:
        steps = parse_steps(steps_text) if steps_text is not None else None
    except ValueError as exc:
        fail(str(exc))
    cfg = _analyze_config(sets, config)
    loaded = []
    for full in _load_runs(runs):
        chosen = select(full, steps, list(layers) or None)
        why = empty_selection(full, chosen)
        if why is not None:
            fail(why + ": nothing would be checked")
        loaded.append(chosen)
    results = [(run, diagnose(run, cfg)) for run in loaded]
    if plots is not None:
        _write_analyze_plots(results, plots)
    if html_out is not None:
        _write_analyze_html(results, html_out)
    if fmt == "json":
        payload = [report_json(r, f) for r, f in results]
        click.echo(dumps(payload[0] if len(payload) == 1 else payload))
    elif fmt == "markdown":
        click.echo("\n\n".join(render_markdown(r, f) for r, f in results))
    else:
        console = _console()
        for i, (run, found) in enumerate(results):
            if i:
                console.rule()
            render_text(run, found, console)
    if fail_on is not None:
        gate = {"warning": 1, "error": 2}[fail_on]
        if any(f.severity.rank >= gate for _, found in results for f in found):
            sys.exit(EXIT_GATE)


def _write_analyze_html(results: list, out: Path) -> None:
    from gradscope._optional import MissingDependencyError
    from gradscope.report.html import write_html

    if out.is_dir():
        fail(f"--html {out} is a directory: give a file name, e.g. {out / 'report.html'}")
    try:
        path = write_html(results, out)
    except MissingDependencyError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the HTML report to {out}: {exc}; choose a writable path")
    _console(stderr=True).print(f"html: {path}", soft_wrap=True)


def _write_analyze_plots(results: list, out: Path) -> None:
    from gradscope._optional import MissingDependencyError
    from gradscope.report.plots import write_plots

    names = [r.path.resolve().name or "run" for r, _ in results]
    for i, (run, found) in enumerate(results):
        name = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"
        sub = out if len(results) == 1 else out / name
        try:
            paths = write_plots(run, found, sub)
        except MissingDependencyError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write plots to {sub}: {exc}")
        _console(stderr=True).print(f"plots: {', '.join(str(p) for p in paths)}", soft_wrap=True)


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("gradscope-demo"), show_default=True,
              help="Directory for the two demo runs.")
@click.option("--steps", type=click.IntRange(10, 100000), default=300, show_default=True)
@click.option("--depth", type=click.IntRange(2, 64), default=12, show_default=True,
              help="Hidden layers of each MLP.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, steps: int, depth: int, seed: int) -> None:
    """Train two deep MLPs (sigmoid vs LeakyReLU) with gradscope watching, then summarise both runs."""
    from gradscope.demo import run_demo

    try:
        run_demo(out, steps=steps, depth=depth, seed=seed, console=_console())
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        fail(f"{exc}")


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tensorboard", "tb_dir", type=click.Path(path_type=Path), required=True,
              help="Directory for the event files; each RUN goes to DIR/<run name>.")
@click.option("--histograms/--no-histograms", default=True, show_default=True,
              help="Also write the per-step distribution of layer gradient norms.")
@click.option("--overwrite", is_flag=True, help="Replace event files already in DIR/<run name>.")
def export(runs: tuple[Path, ...], tb_dir: Path, histograms: bool, overwrite: bool) -> None:
    """Export recorded RUN directories to TensorBoard event files (view: tensorboard --logdir DIR)."""
    import warnings

    from gradscope._optional import MissingDependencyError
    from gradscope.report.export import export_runs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            written = export_runs(list(runs), tb_dir, histograms=histograms, overwrite=overwrite)
    except (RunError, MissingDependencyError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write to {tb_dir}: {exc}; choose a writable --tensorboard DIR")
    console = _console()
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"view with: tensorboard --logdir {tb_dir}")


@main.command()
@click.option("--task", default="spirals", show_default=True,
              help="spirals (synthetic), iris (real, SciPy's bundled file), digits (needs scikit-learn), "
              "finetune (transformers encoder; regime axis).")
@click.option("--activations", default=None, metavar="LIST", help="e.g. relu,leaky_relu,elu,sigmoid,tanh,gelu")
@click.option("--clip", default=None, metavar="LIST", help="e.g. none,norm,value,agc,autoclip,zclip")
@click.option("--depth", default=None, metavar="LIST", help="Hidden layers, e.g. 16,4,32")
@click.option("--init", default=None, metavar="LIST", help="e.g. he,xavier,default")
@click.option("--lr", default=None, metavar="LIST", help="Learning rates, e.g. 3e-3,1e-3")
@click.option("--regime", default=None, metavar="LIST", help="--task finetune: e.g. full,top2,frozen")
@click.option("--backbone", default=None, help="--task finetune: minilm (pretrained, when installed) or tiny")
@click.option("--seeds", default=None, metavar="N", help="Seeds per configuration (default 3; --quick 2).")
@click.option("--steps", default=None, metavar="N", help="Training steps per run (default 300; --quick 100).")
@click.option("--design", default=None, metavar="sweep|product",
              help="sweep: one axis at a time around the baseline (each axis' first value; the default); "
              "product: every combination.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gradscope-compare"), show_default=True,
              help="Directory for the runs, table.md, table.csv and figures; finished runs are reused.")
@click.option("--quick", is_flag=True, help="The small preset: depth 16, 2 seeds, 100 steps (about a minute).")
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
              help="Also write TensorBoard event files into each run (tensorboard --logdir OUT).")
@click.option("--threads", default="1", show_default=True, metavar="N", help="torch CPU threads while training.")
def compare(task: str, activations: str | None, clip: str | None, depth: str | None, init: str | None,
            lr: str | None, regime: str | None, backbone: str | None, seeds: str | None, steps: str | None,
            design: str | None, out: Path, quick: bool, tensorboard: bool, threads: str) -> None:
    """Train a grid of small models with gradscope watching each; compare gradient health in one table.

    With no axis named, every axis takes its default list (--design sweep: one axis at a time around
    the baseline relu/he/depth 16/no clipping). Naming axes compares those; the others stay at the
    baseline. Every configuration and seed is its own run directory under OUT (gradscope analyze works
    on each); re-running skips finished ones, Ctrl-C keeps them.
    """
    from gradscope.experiments.compare import CompareError, build_spec, run_compare

    def count(text: str | None, option: str, high: int) -> int | None:
        if text is None:
            return None
        if not text.strip().isdigit() or not 1 <= int(text) <= high:
            fail(f"{option} {text!r}: give a whole number from 1 to {high}")
        return int(text)

    n_seeds, n_steps, n_threads = count(seeds, "--seeds", 100), count(steps, "--steps", 1_000_000), count(
        threads, "--threads", 1024)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: choose a directory (it is created if missing)")
    options = {"activation": activations, "clip": clip, "depth": depth, "init": init, "lr": lr, "regime": regime}
    try:
        spec = build_spec(task, options, n_seeds, n_steps, design, quick, backbone)
    except ValueError as exc:  # CompareError, TaskError
        fail(str(exc))
    console = _console()
    try:
        outcome, rows, files = run_compare(spec, out, console, tensorboard=tensorboard, threads=n_threads)
    except CompareError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write to {out}: {exc}; choose a writable --out DIR")
    if rows:
        from gradscope.experiments.tables import rich_table

        table = rich_table(rows, title=f"gradscope compare: {spec.task}")
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console.width = max(console.width, 180)
        console.print(table)
    for f in files:
        console.print(f"wrote {f}", soft_wrap=True)
    console.print(f"{outcome.ran} run(s) trained, {outcome.skipped} reused, in {outcome.seconds:.0f} s; "
                  f"inspect one with: gradscope analyze {out}/<run>", soft_wrap=True)
    if outcome.interrupted:
        console.print(f"[yellow]interrupted:[/] kept {len(outcome.results)} finished run(s); run the same "
                      "command again to finish the rest", soft_wrap=True)
        sys.exit(130)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def compact(runs: tuple[Path, ...]) -> None:
    """Merge RUN chunks into RUN/merged/ for fast reading (e.g. a run from a killed process)."""
    from gradscope.run.compact import compact_run

    for path in runs:
        try:
            done = compact_run(path)
        except RunError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{path}: cannot be compacted ({exc}); check free space and permissions")
        _console().print(f"{path}: {'merged' if done else 'nothing new to merge (or a damaged chunk)'}")


if __name__ == "__main__":  # pragma: no cover
    main()
