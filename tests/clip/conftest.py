"""Clip tests. Set the interpreter flag too, in case this directory is what first imports triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
