"""``parse_headers`` reads any message's headers without raising.

A count is clamped to ``[0, MAX_HEADER_COUNT]`` (the deferrals to Celery's
``retries``), a value that is not a number is ignored, and each bad header is
logged once per process.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from snakepit_celery.celery import headers as headers_module
from snakepit_celery.celery.headers import (
    HEADER_COPY,
    HEADER_CRASHES,
    HEADER_DEFERRALS,
    HEADER_FIRST_TRY,
    MAX_HEADER_COUNT,
    forwarded,
    marked_copy,
    parse_headers,
)


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no header logged as bad yet in this process."""
    monkeypatch.setattr(headers_module, "_logged", set())


@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, "Infinity", "1e400", "banana", [1, 2], {"a": 1}, True, 2.5],
    ids=repr,
)
def test_unreadable_crash_count_is_read_as_zero_and_keeps_the_message_tracked(value: Any) -> None:
    parsed = parse_headers({HEADER_CRASHES: value}, 0)
    assert (parsed.crashes, parsed.tracked) == (0, True)


@pytest.mark.parametrize(
    ("value", "count"),
    [(3, 3), ("3", 3), (3.0, 3), (-5, 0), (10**30, MAX_HEADER_COUNT), (None, 0)],
    ids=repr,
)
def test_crash_count_is_an_integer_clamped_to_its_range(value: Any, count: int) -> None:
    assert parse_headers({HEADER_CRASHES: value}, 0).crashes == count


def test_deferrals_larger_than_retries_are_clamped_so_the_attempt_is_at_least_one() -> None:
    parsed = parse_headers({HEADER_DEFERRALS: 5}, 0)
    assert (parsed.deferrals, parsed.attempt) == (0, 1)


def test_deferrals_count_against_retries() -> None:
    parsed = parse_headers({HEADER_DEFERRALS: 2}, 3)
    assert (parsed.retries, parsed.deferrals, parsed.attempt) == (3, 2, 2)


@pytest.mark.parametrize(
    ("retries", "count"), [("two", 0), ("2", 2), (1.5, 0), (None, 0), (-1, 0)], ids=repr
)
def test_non_integer_retries_is_read_as_an_integer_or_zero(retries: Any, count: int) -> None:
    assert parse_headers({}, retries).retries == count


def test_retries_are_read_from_a_request_dict_when_not_given() -> None:
    parsed = parse_headers({"retries": 4, HEADER_DEFERRALS: 9})
    assert (parsed.retries, parsed.deferrals) == (4, 4)


def test_deferrals_are_not_clamped_when_retries_are_unknown() -> None:
    assert parse_headers({HEADER_DEFERRALS: 9}).deferrals == 9


@pytest.mark.parametrize("value", [math.inf, math.nan, "yesterday", -1, 0, True, [1]], ids=repr)
def test_unreadable_first_try_is_ignored(value: Any) -> None:
    parsed = parse_headers({HEADER_FIRST_TRY: value}, 0)
    assert parsed.first_try is None
    assert parsed.since_first_try() == 0.0


def test_first_try_is_read_as_epoch_seconds() -> None:
    parsed = parse_headers({HEADER_FIRST_TRY: "1700000000.5"}, 0)
    assert parsed.first_try == 1700000000.5
    assert parsed.since_first_try() > 0


def test_bad_header_is_logged_once_per_header_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=headers_module.__name__):
        for _ in range(3):
            parse_headers({HEADER_CRASHES: math.inf, HEADER_DEFERRALS: "many"}, 0)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert any(HEADER_CRASHES in line for line in logged)
    assert any(HEADER_DEFERRALS in line for line in logged)


def test_good_headers_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=headers_module.__name__):
        parse_headers({HEADER_CRASHES: 1, HEADER_DEFERRALS: 1, HEADER_FIRST_TRY: 1.0e9}, 1)
    assert caplog.records == []


def test_crash_header_written_in_keeps_a_retry_tracked() -> None:
    parsed = parse_headers({HEADER_CRASHES: "banana", "custom": 1}, 0).with_crash_header()
    assert parsed.raw == {HEADER_CRASHES: 0, "custom": 1}


def test_forwarded_headers_leave_out_kombus_transport_headers() -> None:
    assert forwarded({"redelivered": True, HEADER_CRASHES: 1}) == {HEADER_CRASHES: 1}


def test_retry_of_a_message_carries_snakepits_headers_as_read() -> None:
    raw = {"redelivered": True, HEADER_DEFERRALS: 5, HEADER_FIRST_TRY: "x", "custom": 1}
    assert parse_headers(raw, 1).republished() == {
        HEADER_DEFERRALS: 1,
        HEADER_FIRST_TRY: None,
        "custom": 1,
    }


@pytest.mark.parametrize(
    ("value", "read"),
    [(None, None), ("node@host/12", "node@host/12"), ("?", "?"), (5, "?"), ("", "?")],
)
def test_the_copy_mark_is_a_worker_id_and_anything_else_marks_a_copy_of_unknown(
    value: Any, read: str | None
) -> None:
    raw = {} if value is None else {HEADER_COPY: value}
    assert parse_headers(raw).copy_of == read


@pytest.mark.parametrize(
    ("headers", "mark"),
    [(None, "?"), ({"x": 1}, "?"), ({HEADER_COPY: "node@host/12"}, "node@host/12")],
)
def test_marked_copy_marks_an_unknown_run_and_keeps_a_known_holder(
    headers: dict[str, Any] | None, mark: str
) -> None:
    marked = marked_copy(headers)
    assert parse_headers(marked).copy_of == mark
    assert {k: v for k, v in marked.items() if k != HEADER_COPY} == {
        k: v for k, v in (headers or {}).items() if k != HEADER_COPY
    }
