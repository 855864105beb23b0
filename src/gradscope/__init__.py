"""gradscope: gradient-health diagnostics and profiling for PyTorch.

    with gradscope.watch(model, optimizer, log_dir="runs/exp1") as scope:
        ...  # train as usual; scope.log(loss=loss) adds per-step scalars
    run = gradscope.load_run("runs/exp1")
"""

from gradscope.run.reader import Run, RunError, load_run
from gradscope.scope import Scope, watch

__version__ = "0.1.0"
__all__ = ["Run", "RunError", "Scope", "load_run", "watch", "__version__"]
