"""gradscope: gradient-health diagnostics and profiling for PyTorch."""

__version__ = "0.1.0"
