"""Reading a JSON file named by a setting (hardware override, lock file), bounded.

A setting may point anywhere: at a symlink to ``/dev/zero``, a FIFO nobody
writes, a huge or deeply nested document. Only a regular file of at most
``MAX_BYTES`` is read (opened non-blocking, so nothing can hang the worker),
and a document nested deeper than ``MAX_DEPTH`` is refused before it is
parsed. Every refusal is a ``JSONFileError``; ``about(file)`` words it in
one line naming the file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
from typing import Any

__all__ = ["MAX_BYTES", "MAX_DEPTH", "JSONFileError", "parse", "read"]

#: Largest file read (bytes); a real override or lock file is a few KiB.
MAX_BYTES = 1 << 20
#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 64

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class JSONFileError(ValueError):
    """A file or text that is not a small JSON document."""

    def __init__(self, problem: str, *, template: str = "{file} {problem}") -> None:
        super().__init__(problem)
        self.problem = problem
        self.template = template

    def about(self, file: str) -> str:
        """One line saying what is wrong with ``file`` (a quoted path or "lock text")."""
        return self.template.replace("{problem}", self.problem).replace("{file}", file)


def read(path: str | os.PathLike[str]) -> Any:
    """Parse the JSON regular file at ``path`` (symlinks followed); ``JSONFileError`` if unfit."""
    return parse(_read_text(os.fspath(path)))


def parse(text: str) -> Any:
    """Parse JSON ``text`` of at most ``MAX_DEPTH`` levels; ``JSONFileError`` otherwise."""
    if len(text) > MAX_BYTES:
        raise JSONFileError(f"is larger than {MAX_BYTES} bytes")
    steps = (1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub("", text)))
    too_deep = JSONFileError(f"is not valid JSON: nested deeper than {MAX_DEPTH} levels")
    if max(itertools.accumulate(steps), default=0) > MAX_DEPTH:
        raise too_deep
    try:
        return json.loads(text)
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise JSONFileError(f"is not valid JSON: {exc}") from None


def _read_text(path: str) -> str:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise JSONFileError("is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as file:
            # The path may have been swapped for something else since the stat.
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise JSONFileError("is not a regular file")
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise JSONFileError(
            exc.strerror or str(exc), template="cannot read {file}: {problem}"
        ) from None
    if len(data) > MAX_BYTES:
        raise JSONFileError(f"is larger than {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONFileError(f"is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
