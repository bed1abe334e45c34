"""Benchmarks of the CAKE engine: ``python -m bench.synthesis`` and ``python -m bench.quality``.

They live outside ``cake_core`` because they measure it: each one prints a table and writes the
numbers, with the machine they came from, to ``bench/results/<name>-<device>.json``.
"""
