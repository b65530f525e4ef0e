"""Celery apps that the benchmark worker nodes load (``celery -A benchmarks.apps.<name>``)."""

#: Environment variable holding the URL of the benchmark's private Redis.
ENV_URL = "BENCH_REDIS_URL"
