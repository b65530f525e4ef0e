"""Celery apps that the benchmark worker nodes load (``celery -A benchmarks.apps.<name>``)."""

#: Environment variable holding the URL of the benchmark's private Redis.
ENV_URL = "BENCH_REDIS_URL"
#: Environment variable naming another broker (RabbitMQ) than that Redis, when set.
ENV_BROKER = "BENCH_BROKER_URL"
#: Redis list the benchmark apps' hanging tasks push their pool child's pid onto.
HANG_PIDS = "bench:hang:pids"
#: Environment variable that, set to "1", starts ``bench_app`` without ``install()``: plain Celery.
ENV_PLAIN = "BENCH_PLAIN_CELERY"
#: Redis list the node-death benchmark's tasks push their id onto when they start.
DEATH_STARTS = "bench:death:starts"
