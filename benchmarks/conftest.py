"""Benchmarks run with `pytest benchmarks --benchmark-only`; they never run in the test suite."""
