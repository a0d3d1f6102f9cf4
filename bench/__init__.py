"""Benchmark harness: the local cluster under load, a table and one JSON line of figures (make bench)."""
