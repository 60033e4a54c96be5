"""Benchmarks: each prints its figures; nothing here asserts a time."""
