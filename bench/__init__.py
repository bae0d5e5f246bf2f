"""Benchmarks: each module has ``main(small: bool = False)`` and prints a table of
our median beside the peer's median on the same input, and their ratio."""
