"""Benchmarks: PyEdge against bare baselines measured in the same run, reported as ratios."""
