"""Benchmarks of outboxkit against the real services: `python -m bench --help`."""
