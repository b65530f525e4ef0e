"""Shared fixtures: a real Redis for every test (never a fake)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from snakepit_celery.store import MemoryStore, Store, fail_open, set_fail_open, store_from_url
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary
from snakepit_celery.testing.redis_server import redis_url as find_redis_url


@pytest.fixture(scope="session")
def redis_base_url() -> str:
    """Base URL of the Redis used by this run (env, local 6379, or a private server)."""
    return find_redis_url().rstrip("/")


@pytest.fixture(scope="session")
def redis_url(redis_base_url: str) -> str:
    """URL with a database chosen for this run (tests isolate by key prefix, not FLUSHDB)."""
    if redis_base_url.count("/") > 2:
        return redis_base_url
    db = 1 + os.getpid() % 14
    return f"{redis_base_url}/{db}"


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to one test; its keys are deleted afterwards (never FLUSHDB)."""
    prefix = f"sptest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass  # a test that stopped its Redis; nothing of ours is left to delete there
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def each_store(request: pytest.FixtureRequest, key_prefix: str) -> Store:
    """The test's store on each backend in turn: in-process memory, then real Redis."""
    if request.param == "memory":
        return MemoryStore(key_prefix=key_prefix)
    return store_from_url(request.getfixturevalue("redis_url"), key_prefix=key_prefix)


@pytest.fixture
def redis_store(redis_url: str, key_prefix: str) -> Store:
    """The test's store on real Redis (shared by every object using the same prefix)."""
    return store_from_url(redis_url, key_prefix=key_prefix)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, to stop and restart (skipped without the binary)."""
    binary = find_redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = EmbeddedRedis(binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def open_failing() -> Iterator[None]:
    """``snakepit_fail_open`` on (the default) for this test, whatever ran before."""
    previous = fail_open()
    set_fail_open(True)
    yield
    set_fail_open(previous)
