"""Benchmark scripts: performance is measured here, never asserted in tests."""
