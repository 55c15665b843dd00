"""Benchmarks (``hearth bench SUITE``): every figure beside a baseline measured in the same run."""
