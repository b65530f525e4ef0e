"""Choosing a store: URLs, the per-URL cache, the default store and the fail-open policy."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import snakepit_celery.store.switches as switches_module
from snakepit_celery.errors import ConfigError
from snakepit_celery.store import (
    MemoryStore,
    RedisStore,
    fail_open,
    report_store_error,
    resolve_store,
    set_default_store,
    set_fail_open,
    store_error_count,
    store_from_url,
)
from snakepit_celery.store.urls import (
    ClusterURL,
    SentinelURL,
    parse_cluster_url,
    parse_sentinel_url,
)


@pytest.fixture(autouse=True)
def clean_defaults() -> Iterator[None]:
    """Every test starts and ends with the process defaults."""
    set_default_store(None)
    set_fail_open(True)
    yield
    set_default_store(None)
    set_fail_open(True)


# -- store_from_url --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", MemoryStore),
        ("memory://named", MemoryStore),
        ("redis://localhost:6379/0", RedisStore),
        ("rediss://user:pw@redis.example:6380/2", RedisStore),
        ("unix:///var/run/redis.sock?db=3", RedisStore),
        ("redis+sentinel://h1:26379,h2:26379/mymaster/0", RedisStore),
        ("redis+cluster://h1:7000,h2:7001", RedisStore),
    ],
)
def test_store_from_url_accepts_supported_schemes(url: str, kind: type, key_prefix: str) -> None:
    store = store_from_url(url, key_prefix=key_prefix)
    assert isinstance(store, kind)
    assert store.url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "localhost:6379",
        "http://localhost:6379",
        "mongodb://localhost",
        "amqp://guest@localhost//",
        "redis+sentinel://h1:26379",
        "redis+sentinel://h1:26379/mymaster/0/extra",
        "redis+sentinel://h1:notaport/mymaster",
        "redis+cluster://h1:7000/3",
        "redis+cluster:///0",
    ],
)
def test_store_from_url_rejects_other_urls_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        store_from_url(url)
    assert info.value.setting == "snakepit_store_url"
    assert "snakepit_store_url" in str(info.value)
    assert repr(url) in str(info.value)


def test_rejection_lists_the_allowed_schemes() -> None:
    with pytest.raises(ConfigError) as info:
        store_from_url("http://x")
    for scheme in ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://"):
        assert scheme in str(info.value)
    assert "memory://" in str(info.value)


def test_same_url_and_prefix_share_one_store(redis_url: str, key_prefix: str) -> None:
    assert store_from_url(redis_url, key_prefix=key_prefix) is store_from_url(
        redis_url, key_prefix=key_prefix
    )


def test_different_prefixes_get_different_stores(redis_url: str, key_prefix: str) -> None:
    first = store_from_url(redis_url, key_prefix=key_prefix)
    assert first is not store_from_url(redis_url, key_prefix=key_prefix + "-other")


def test_memory_url_shares_state_across_lookups(key_prefix: str) -> None:
    store_from_url("memory://", key_prefix=key_prefix).taint_set(
        "p", "worker:1", duration=30.0, details={}
    )
    assert store_from_url("memory://", key_prefix=key_prefix).taint_active("p", "worker:1")


def test_prefix_with_braces_is_rejected(redis_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisStore(redis_url, key_prefix="bad{prefix}")
    assert info.value.setting == "snakepit_key_prefix"


# -- URL parsing --------------------------------------------------------------------


def test_sentinel_url_gives_hosts_service_and_db() -> None:
    assert parse_sentinel_url("redis+sentinel://h1:26379,h2:26380/mymaster/2") == SentinelURL(
        hosts=(("h1", 26379), ("h2", 26380)), service="mymaster", db=2
    )


def test_sentinel_url_defaults_port_and_db() -> None:
    conf = parse_sentinel_url("redis+sentinel://h1,h2/cache")
    assert (conf.hosts, conf.service, conf.db) == ((("h1", 26379), ("h2", 26379)), "cache", 0)


def test_sentinel_url_carries_credentials_and_options() -> None:
    conf = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@h1:26379/mymaster/1?sentinel_password=sp&ssl=true"
    )
    assert (conf.username, conf.password, conf.sentinel_password, conf.ssl) == (
        "app",
        "s@cret",
        "sp",
        True,
    )


def test_sentinel_url_accepts_ipv6_hosts() -> None:
    conf = parse_sentinel_url("redis+sentinel://[::1]:26379,[fe80::2]/mymaster")
    assert conf.hosts == (("::1", 26379), ("fe80::2", 26379))


def test_cluster_url_gives_startup_nodes() -> None:
    assert parse_cluster_url("redis+cluster://:pw@h1:7000,h2:7001/0") == ClusterURL(
        hosts=(("h1", 7000), ("h2", 7001)), password="pw"
    )


def test_cluster_url_defaults_port() -> None:
    assert parse_cluster_url("redis+cluster://h1").hosts == (("h1", 6379),)


# -- default store --------------------------------------------------------------------


def test_resolve_none_is_process_wide_memory_store() -> None:
    store = resolve_store(None)
    assert isinstance(store, MemoryStore)
    assert resolve_store(None) is store


def test_resolve_url_uses_the_cache(redis_url: str) -> None:
    assert resolve_store(redis_url) is store_from_url(redis_url)


def test_resolve_store_object_is_itself() -> None:
    store = MemoryStore()
    assert resolve_store(store) is store


def test_set_default_store_by_url_changes_resolve_none(redis_url: str) -> None:
    set_default_store(redis_url)
    assert resolve_store(None) is store_from_url(redis_url)


def test_set_default_store_none_restores_memory(redis_url: str) -> None:
    set_default_store(redis_url)
    set_default_store(None)
    assert isinstance(resolve_store(None), MemoryStore)


# -- fail open ----------------------------------------------------------------------


def test_fail_open_is_on_by_default() -> None:
    assert fail_open() is True


def test_set_fail_open_turns_it_off() -> None:
    set_fail_open(False)
    assert fail_open() is False


def test_store_errors_are_logged_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(switches_module, "_last_error_log", float("-inf"))
    before = store_error_count()
    with caplog.at_level(logging.WARNING, logger="snakepit_celery.store"):
        for _ in range(3):
            report_store_error(ConnectionError("down"))
    warnings = [r for r in caplog.records if r.name == "snakepit_celery.store"]
    assert len(warnings) == 1
    assert "down" in warnings[0].getMessage()
    assert store_error_count() == before + 3


def test_store_errors_are_logged_again_after_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(switches_module, "_last_error_log", float("-inf"))
    with caplog.at_level(logging.WARNING, logger="snakepit_celery.store"):
        report_store_error(ConnectionError("first"))
        monkeypatch.setattr(switches_module, "_last_error_log", float("-inf"))
        report_store_error(ConnectionError("second"))
    assert len([r for r in caplog.records if r.name == "snakepit_celery.store"]) == 2
