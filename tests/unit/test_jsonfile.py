"""Hardware override and lock files pointing at hostile input: one-line ConfigError, fast.

Both settings name a file that is read by one bounded reader: only regular
files, at most ``MAX_BYTES``, nested at most ``MAX_DEPTH`` levels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snakepit_celery import hardware, jsonfile, lockfile
from snakepit_celery.errors import ConfigError
from tests.support.hardware import isolated_hardware

__all__ = ["isolated_hardware"]


def _override(path: Path) -> None:
    hardware.configure(path)


def _lock(path: Path) -> None:
    lockfile.validate(path)


@pytest.fixture(params=["override", "env-override", "lock"])
def reader(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[Callable[[Path], None], str]:
    """How one setting reads its file, and the setting's name."""

    def env_override(path: Path) -> None:
        monkeypatch.setenv("SNAKEPIT_HARDWARE", str(path))
        hardware.clear_cache()
        hardware.detect()

    readers: dict[str, tuple[Callable[[Path], None], str]] = {
        "override": (_override, "snakepit_hardware"),
        "env-override": (env_override, "snakepit_hardware"),
        "lock": (_lock, "snakepit_lock_file"),
    }
    return readers[request.param]


def _refused(reader: tuple[Callable[[Path], None], str], path: Path, complaint: str) -> None:
    """``path`` is refused within a second with one line naming the setting and the file."""
    load, setting = reader
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert caught.value.setting == setting
    assert setting in message
    assert str(path) in message
    assert complaint in message
    assert "\n" not in message


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.timeout(20)
def test_a_symlink_to_dev_zero_is_refused_as_not_a_regular_file(
    tmp_path: Path, reader: tuple[Callable[[Path], None], str]
) -> None:
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    _refused(reader, link, "is not a regular file")


@pytest.mark.timeout(20)
def test_a_fifo_is_refused_without_waiting_for_a_writer(
    tmp_path: Path, reader: tuple[Callable[[Path], None], str]
) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    _refused(reader, fifo, "is not a regular file")


def test_a_directory_is_refused(tmp_path: Path, reader: tuple[Callable[[Path], None], str]) -> None:
    _refused(reader, tmp_path, "is not a regular file")


def test_a_file_over_the_size_cap_is_refused(
    tmp_path: Path, reader: tuple[Callable[[Path], None], str]
) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"pad": "' + "x" * jsonfile.MAX_BYTES + '"}')
    _refused(reader, big, f"larger than {jsonfile.MAX_BYTES} bytes")


def test_deeply_nested_json_is_refused_without_recursion_error(
    tmp_path: Path, reader: tuple[Callable[[Path], None], str]
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text(_nested(100_000))
    _refused(reader, deep, f"nested deeper than {jsonfile.MAX_DEPTH} levels")


def test_nesting_just_past_the_limit_is_refused_and_at_the_limit_parses() -> None:
    assert jsonfile.parse(_nested(jsonfile.MAX_DEPTH)) is not None
    with pytest.raises(jsonfile.JSONFileError, match="nested deeper"):
        jsonfile.parse(_nested(jsonfile.MAX_DEPTH + 1))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"name": "[" * 1000 + '\\"{' * 500})
    assert jsonfile.parse(text) == json.loads(text)


def test_a_deeply_nested_lock_text_is_refused() -> None:
    with pytest.raises(ConfigError, match="lock text is not valid JSON: nested deeper"):
        lockfile.validate(_nested(100_000))


def test_a_file_that_is_not_utf8_is_refused(
    tmp_path: Path, reader: tuple[Callable[[Path], None], str]
) -> None:
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"a": "\xff\xfe"}')
    _refused(reader, binary, "is not UTF-8 text")


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text(json.dumps({"accelerator": "cpu", "platform": "linux-x86_64"}))
    link = tmp_path / "link.json"
    link.symlink_to(target)
    hardware.configure(link)
    assert hardware.detect().accelerator == hardware.Accelerator.CPU
