"""CommandLog: what clients send to Redis, without what Lua scripts run."""

from __future__ import annotations

import redis

from snakepit_celery.testing.monitor import CommandLog


def test_logs_client_commands_between_marks_but_not_script_internals(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:k"
    with CommandLog(_url(redis_client)) as log:
        start = log.mark(redis_client)
        redis_client.set(key, "1")
        redis_client.eval("return redis.call('GET', KEYS[1])", 1, key)
        end = log.mark(redis_client)
        redis_client.delete(key)
        between = [c for c in log.since(start, end) if key in c]
    assert [c.split()[0].upper() for c in between] == ["SET", "EVAL"]


def test_db_filter_keeps_only_that_database(redis_url: str, key_prefix: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    here, other = redis.Redis.from_url(f"{base}/3"), redis.Redis.from_url(f"{base}/4")
    with CommandLog(base, db=3) as log:
        start = log.mark(here)
        here.get(f"{key_prefix}:here")
        other.get(f"{key_prefix}:other")
        end = log.mark(here)
        seen = log.since(start, end)
    assert any("here" in c for c in seen)
    assert not any("other" in c for c in seen)


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
