"""The ``as_dict()`` shape of the hardware types: writing it, and reading it back checked.

``PlainData`` gives every frozen value type its ``as_dict()``. Each reader
returns the value or raises :class:`ShapeError` naming where in the document
(``cuda.devices[0].id``) it went wrong and what was expected.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

__all__ = [
    "PlainData",
    "ShapeError",
    "boolean",
    "get",
    "integer",
    "mapping",
    "optional",
    "optional_integer",
    "optional_string",
    "plain",
    "string",
    "string_list",
]

T = TypeVar("T")


class ShapeError(ValueError):
    """A mapping does not have the ``as_dict()`` shape; the message says where."""


class PlainData:
    """Base of the hardware value types (dataclasses): ``as_dict()`` in JSON-safe plain types.

    Keys are the field names in field order; enums become their values,
    tuples lists, nested values their own ``as_dict()``.
    """

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        fields = dataclasses.fields(cast(Any, self))
        return {field.name: plain(getattr(self, field.name)) for field in fields}


def plain(value: Any) -> Any:
    """``value`` in JSON-safe plain types (see ``PlainData``)."""
    if isinstance(value, PlainData):
        return value.as_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value


def mapping(data: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    """``data`` if it is a mapping with no key outside ``allowed``."""
    label = where or "top level"
    if not isinstance(data, Mapping):
        raise ShapeError(f"{label}: expected an object, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ShapeError(
            f"{label}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return data


def get(
    obj: Mapping[str, Any], key: str, where: str, conv: Callable[[Any, str], T], default: T
) -> T:
    """``conv(obj[key])`` (errors name ``where.key``), ``default`` when the key is absent."""
    if key not in obj:
        return default
    return conv(obj[key], f"{where}.{key}" if where else key)


def integer(value: Any, where: str) -> int:
    """``value`` if it is an int >= 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(f"{where}: expected an integer >= 0, got {value!r}")
    return value


def string(value: Any, where: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ShapeError(f"{where}: expected a string, got {value!r}")
    return value


def boolean(value: Any, where: str) -> bool:
    """``value`` if it is true or false."""
    if not isinstance(value, bool):
        raise ShapeError(f"{where}: expected true or false, got {value!r}")
    return value


def string_list(value: Any, where: str) -> list[str]:
    """``value`` as a list of strings (a JSON array of strings)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ShapeError(f"{where}: expected a list of strings, got {value!r}")
    return [string(item, f"{where}[{i}]") for i, item in enumerate(value)]


def optional(conv: Callable[[Any, str], T]) -> Callable[[Any, str], T | None]:
    """``conv`` that also accepts None (JSON null)."""

    def convert(value: Any, where: str) -> T | None:
        return None if value is None else conv(value, where)

    return convert


#: ``integer`` or None.
optional_integer = optional(integer)
#: ``string`` or None.
optional_string = optional(string)
