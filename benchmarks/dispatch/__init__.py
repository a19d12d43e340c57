"""The dispatch benchmark (`make bench`): see __main__.py and docs/benchmark.md."""
