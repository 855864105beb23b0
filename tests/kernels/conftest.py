"""Kernel tests run the Triton kernels on CPU through the interpreter: set it before triton loads."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
