"""Shared fixtures: a real Redis for every test (never a fake)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

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
def key_prefix() -> str:
    """A key prefix unique to one test."""
    return f"sptest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
