"""Clip tests. Without a GPU, set the interpreter flag too, in case this directory first imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
