"""The benchmarks are their own pytest suite (``python -m pytest bench --benchmark-enable``)."""
