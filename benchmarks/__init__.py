"""Benchmark scripts (issue 5): each prints a table and, with --json PATH, writes its figures."""
