"""Triton kernels of gradscope, packaged as ``gradscope.kernels``.

Importing this package never imports triton; the launchers in ``clip_norm`` do, lazily.
"""
