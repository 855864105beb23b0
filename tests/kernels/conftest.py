"""Kernel tests run on CUDA tensors, compiled, when a GPU is present; otherwise the Triton interpreter runs
them on CPU tensors (the flag must be set before triton loads). ``f64_refs.DEV`` is the device."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
