"""Secrets and TLS of store URLs: no password in any message, repr or log; Celery's TLS spelling."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from snakepit_celery import CircuitBreaker, HealthMonitor
from snakepit_celery.celery.install import install
from snakepit_celery.config import load_settings, resolve_store_url
from snakepit_celery.errors import ConfigError, StoreUnavailableError
from snakepit_celery.store import (
    RedisStore,
    clear_store_cache,
    redact,
    report_store_error,
    set_default_store,
    set_fail_open,
    store_from_url,
)

SECRET = "s3cr3t-Pa55word"

BAD_URLS = [
    f"http://snake:{SECRET}@h:6379/0",
    f"snake:{SECRET}@h:6379",
    f"redis+sentinel://snake:{SECRET}@h:bad/svc",
    f"redis+sentinel://snake:{SECRET}@h:26379",
    f"redis+sentinel://snake:{SECRET}@h:26379/svc/0/extra",
    f"redis+cluster://snake:{SECRET}@h:7000/3",
    f"redis+cluster://snake:{SECRET}@/0",
    f"redis://h:6379/0?password={SECRET}&ssl_cert_reqs=sometimes",
    f"rediss://:{SECRET}@h:6379/0?ssl_cert_reqs=maybe",
]


@pytest.fixture(autouse=True)
def clean_defaults() -> Iterator[None]:
    yield
    set_default_store(None)
    set_fail_open(True)
    clear_store_cache()


def error_text(call: Callable[[], Any]) -> str:
    with pytest.raises((ConfigError, StoreUnavailableError)) as info:
        call()
    return f"{info.value} {info.value!r} {info.value.args!r}"


@pytest.mark.parametrize("url", BAD_URLS)
def test_store_from_url_errors_hide_the_password(url: str) -> None:
    assert SECRET not in error_text(lambda: store_from_url(url))


@pytest.mark.parametrize("url", BAD_URLS)
def test_redis_store_errors_hide_the_password(url: str) -> None:
    assert SECRET not in error_text(lambda: RedisStore(url))


@pytest.mark.parametrize("url", BAD_URLS)
def test_settings_errors_hide_the_password(url: str) -> None:
    assert SECRET not in error_text(lambda: load_settings({"snakepit_store_url": url}, env={}))


def test_missing_store_url_error_hides_broker_passwords() -> None:
    settings = load_settings({}, env={})
    text = error_text(
        lambda: resolve_store_url(
            settings, f"amqp://snake:{SECRET}@rabbit//", f"db+postgresql://u:{SECRET}@pg/x"
        )
    )
    assert SECRET not in text
    assert "amqp://snake:***@rabbit//" in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis://snake:{SECRET}@h:6379/0",
        f"redis://h:6379/0?password={SECRET}",
        f"rediss://:{SECRET}@h:6380/1?ssl_cert_reqs=CERT_REQUIRED",
        f"redis+sentinel://snake:{SECRET}@h1,h2/svc?sentinel_password={SECRET}",
        f"redis+cluster://:{SECRET}@h1:7000,h2:7001",
    ],
)
def test_reprs_hide_the_password(url: str) -> None:
    store = RedisStore(url)
    breaker = CircuitBreaker("b", store=store)
    monitor = HealthMonitor("p", store=url)
    for text in (repr(store), repr(breaker), repr(monitor)):
        assert SECRET not in text


@pytest.mark.parametrize(
    "url",
    [
        f"redis://snake:{SECRET}@127.0.0.1:1/0",
        f"redis://127.0.0.1:1/0?password={SECRET}",
        f"redis+sentinel://snake:{SECRET}@127.0.0.1:1/svc?sentinel_password={SECRET}",
    ],
)
def test_unavailable_errors_and_their_logs_hide_the_password(
    url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(url, socket_timeout=0.05, connect_timeout=0.05)
    with pytest.raises(StoreUnavailableError) as info:
        store.now()
    assert SECRET not in str(info.value)
    monkeypatch.setattr("snakepit_celery.store.switches._last_error_log", float("-inf"))
    with caplog.at_level(logging.DEBUG):
        report_store_error(info.value)
        report_store_error(ConnectionError(f"lost {url}"))
    assert caplog.records
    assert SECRET not in caplog.text


def test_install_log_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    app = Celery("secrets", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.snakepit_store_url = f"redis://snake:{SECRET}@127.0.0.1:1/0?password={SECRET}"
    with caplog.at_level(logging.DEBUG, logger="snakepit_celery"):
        install(app)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "snake:***@" in logged
    assert SECRET not in logged


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"redis://u:{SECRET}@h:1/0", "redis://u:***@h:1/0"),
        (f"redis://:{SECRET}@h", "redis://:***@h"),
        (f"u:{SECRET}@h:6379", "u:***@h:6379"),
        (f"redis://h/0?db=1&password={SECRET}", "redis://h/0?db=1&password=***"),
        (f"x?sentinel_password={SECRET}&ssl=1", "x?sentinel_password=***&ssl=1"),
        (f"bad url 'redis://u:{SECRET}@h' here", "bad url 'redis://u:***@h' here"),
        ("amqp://guest@localhost//", "amqp://guest@localhost//"),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_hides_passwords_in_every_spelling(text: str, shown: str) -> None:
    assert redact(text) == shown


# -- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "mode"),
    [
        ("CERT_REQUIRED", ssl.CERT_REQUIRED),
        ("cert_optional", ssl.CERT_OPTIONAL),
        ("CERT_NONE", ssl.CERT_NONE),
        ("required", ssl.CERT_REQUIRED),
        ("Optional", ssl.CERT_OPTIONAL),
        ("none", ssl.CERT_NONE),
    ],
)
def test_celery_tls_spellings_reach_redis_py(spelling: str, mode: ssl.VerifyMode) -> None:
    store = RedisStore(f"rediss://127.0.0.1:1/0?ssl_cert_reqs={spelling}")
    connection = store.client.connection_pool.make_connection()
    assert connection.cert_reqs == mode


def test_sentinel_and_cluster_urls_accept_the_tls_spellings() -> None:
    RedisStore("redis+sentinel://h1/svc?ssl=true&ssl_cert_reqs=CERT_REQUIRED")
    RedisStore("redis+cluster://h1:7000?ssl=true&ssl_cert_reqs=CERT_NONE")


@pytest.mark.parametrize(
    "url",
    [
        "rediss://h:6380/0?ssl_cert_reqs=CERT_SOMETIMES",
        "redis+sentinel://h1/svc?ssl=true&ssl_cert_reqs=strict",
        "redis+cluster://h1:7000?ssl=true&ssl_cert_reqs=bogus",
    ],
)
def test_unknown_tls_spelling_fails_at_construction_naming_the_setting(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisStore(url)
    assert info.value.setting == "snakepit_store_url"
    assert "ssl_cert_reqs" in str(info.value)
    assert "CERT_REQUIRED" in str(info.value)


# -- Sentinel -------------------------------------------------------------------------------


def test_unreachable_sentinel_is_one_line_naming_sentinels_and_master() -> None:
    store = RedisStore(
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
        socket_timeout=0.05,
        connect_timeout=0.05,
    )
    with pytest.raises(StoreUnavailableError) as info:
        store.now()
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 300
    assert "127.0.0.1:1, 127.0.0.1:2" in message
    assert "'mymaster'" in message
