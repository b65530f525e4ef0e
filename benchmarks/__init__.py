"""Benchmarks of snakepit_celery, run by ``make bench`` (``python -m benchmarks``).

Each ``benchmarks/bench_<name>.py`` module has a ``main() -> str`` that runs
its measurements (well under a minute) and returns a Markdown section body;
the runner prints it and refreshes that module's section in
``benchmarks/RESULTS.md``. Numbers are ratios against a baseline measured in
the same run, never absolute thresholds.
"""
