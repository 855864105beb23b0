"""The ``gradscope`` command line: analyze, demo (and, as they land, compare and export)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

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
@click.version_option(package_name="gradscope")
def main() -> None:
    """gradscope: gradient-health diagnostics for PyTorch training runs.

    Record a run with gradscope.watch(model, optimizer, log_dir=RUN), then inspect it here.
    """


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
def analyze(runs: tuple[Path, ...]) -> None:
    """Summarise recorded RUN directories: gradient norms by depth and non-finite counts."""
    import warnings

    from gradscope.report import layer_table
    from gradscope.run.reader import load_run

    console = _console()
    for path in runs:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run = load_run(path)
        except RunError as exc:
            fail(str(exc))
        for w in caught:
            _console(stderr=True).print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
        console.print(layer_table(run))


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
    from gradscope.export import export_runs

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


if __name__ == "__main__":  # pragma: no cover
    main()
