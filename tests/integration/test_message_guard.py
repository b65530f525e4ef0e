"""The message guard's checks: which task messages would make Celery's main process fail."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu.message import Message

from snakepit_celery.celery.bootsteps.message_guard import message_problem

GOOD_BODY = [[1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
HEADERS = {"task": "t", "id": "id-1", "timelimit": [None, None]}


def _message(body: Any = GOOD_BODY, **headers: Any) -> Message:
    merged = {k: v for k, v in {**HEADERS, **headers}.items() if v != "<absent>"}
    return Message(
        body=json.dumps(body),
        headers=merged,
        content_type="application/json",
        content_encoding="utf-8",
    )


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(_message(), id="good"),
        pytest.param(_message(timelimit=[10, 5.5]), id="timelimit-numbers"),
        pytest.param(_message(timelimit=None), id="timelimit-none"),
        pytest.param(_message(timelimit="<absent>"), id="timelimit-absent"),
        pytest.param(_message([[], {}, None]), id="embed-none"),
        pytest.param(Message(body="{}", headers={"id": "x"}), id="protocol-1-left-to-celery"),
    ],
)
def test_message_celery_can_handle_passes(message: Message) -> None:
    assert message_problem(message) is None


@pytest.mark.parametrize(
    ("message", "words"),
    [
        pytest.param(_message({"a": 1}), "body", id="body-a-dict"),
        pytest.param(_message([[1], {}]), "body", id="body-two-items"),
        pytest.param(_message([1, {}, {}]), "body", id="args-not-a-list"),
        pytest.param(_message(timelimit="zz"), "timelimit", id="timelimit-text"),
        pytest.param(_message(timelimit=[1]), "timelimit", id="timelimit-one"),
        pytest.param(_message(timelimit=[True, None]), "timelimit", id="timelimit-bool"),
        pytest.param(_message(timelimit=[-1, None]), "timelimit", id="timelimit-negative"),
        pytest.param(_message(id="<absent>"), "'id'", id="no-id"),
        pytest.param(_message(id=""), "'id'", id="empty-id"),
        pytest.param(_message(id=5), "'id'", id="id-a-number"),
    ],
)
def test_message_that_kills_celery_is_named(message: Message, words: str) -> None:
    problem = message_problem(message)
    assert problem is not None and words in problem
