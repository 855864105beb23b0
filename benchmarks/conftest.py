"""Benchmarks run with `pytest benchmarks --benchmark-only`; they never run in the test suite."""

import sys
from pathlib import Path

# The checkout's top-level kernels/ (packaged as gradscope.kernels) would shadow Hugging Face's `kernels`
# package, which transformers imports when installed, whenever the checkout root is on sys.path
# (`python -m pytest` from the root puts it there). gradscope itself is imported from its installation.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
