"""Benchmark suite for aigw: a mock upstream, a bare reference proxy and the load script.

Run `python -m benchmarks.run` from the repository root; `benchmarks/README.md` explains the
columns and the targets.
"""
