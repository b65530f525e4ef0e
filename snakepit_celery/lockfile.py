"""Lock files: pin the hardware a deployment was built for, and check a host against it.

``generate()`` writes the upstream shape (``generated_at``, ``hardware`` =
``hardware.identity()``, ``dependencies``, ``compatibility``); ``validate()``
compares a lock's ``hardware`` section with this host and raises
``LockMismatchError`` with the upstream reasons, in the upstream order:
``accelerator_mismatch``, ``insufficient_gpus``, ``missing_cpu_features``.
A worker with the setting ``snakepit_lock_file`` calls ``validate()`` at start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from snakepit_celery import hardware, jsonfile
from snakepit_celery.errors import ConfigError, LockMismatchError

__all__ = [
    "SETTING",
    "generate",
    "load",
    "mismatch",
    "parse_dependency_args",
    "validate",
    "validate_command",
]

#: The Celery setting naming a lock file a worker must satisfy.
SETTING = "snakepit_lock_file"

_SHAPE = "a lock file written by snakepit_celery.lockfile.generate()"


def generate(dependencies: Mapping[str, Any] | Sequence[Any] | None = None) -> str:
    """A lock file for this host as pretty JSON text.

    ``dependencies`` is recorded as given (typically ``{"torch": "2.3.1"}``);
    it must be JSON-serialisable.
    """
    identity = hardware.identity()
    lock = {
        "generated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "hardware": identity,
        "dependencies": dict(dependencies) if isinstance(dependencies, Mapping) else dependencies,
        "compatibility": {
            "cuda_required": identity["accelerator"] == "cuda",
            "min_gpu_count": identity["gpu_count"],
            "cpu_features": identity["cpu_features"],
        },
    }
    if lock["dependencies"] is None:
        lock["dependencies"] = {}
    try:
        return json.dumps(lock, indent=2)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "dependencies", dependencies, "JSON-serialisable values", f"dependencies: {exc}"
        ) from exc


def load(path_or_text: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and shape-check a lock file; ``ConfigError`` (setting ``snakepit_lock_file``) if bad.

    A str starting with ``{`` is the lock itself, anything else a path.
    """
    is_text = isinstance(path_or_text, str) and path_or_text.lstrip().startswith("{")
    label = "lock text" if is_text else repr(os.fspath(path_or_text))
    value = str(path_or_text)[:80] if is_text else os.fspath(path_or_text)

    def bad(problem: str) -> ConfigError:
        return ConfigError(SETTING, value, _SHAPE, f"{SETTING}: {problem}")

    try:
        lock = jsonfile.parse(str(path_or_text)) if is_text else jsonfile.read(path_or_text)
    except jsonfile.JSONFileError as exc:
        raise bad(exc.about(label)) from None
    if not isinstance(lock, dict):
        raise bad(f"{label} is not a JSON object")
    section = lock.get("hardware")
    if not isinstance(section, dict):
        raise bad(f"{label} has no 'hardware' object")
    if not isinstance(section.get("accelerator"), str):
        raise bad(f"{label} has no string 'hardware.accelerator'")
    count = section.get("gpu_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise bad(f"{label} has no integer 'hardware.gpu_count' >= 0")
    features = section.get("cpu_features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise bad(f"{label} has no list of strings 'hardware.cpu_features'")
    return lock


def mismatch(locked: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, str] | None:
    """Compare two identities: None when ``current`` satisfies ``locked``, else (reason, text).

    Pure; checks in the upstream order.
    """
    if locked["accelerator"] != current["accelerator"]:
        return "accelerator_mismatch", (
            f"the lock file needs accelerator {locked['accelerator']!r}, "
            f"this host has {current['accelerator']!r}"
        )
    if locked["gpu_count"] > current["gpu_count"]:
        return "insufficient_gpus", (
            f"the lock file needs {locked['gpu_count']} GPU(s), "
            f"this host has {current['gpu_count']}"
        )
    missing = sorted(set(locked["cpu_features"]) - set(current["cpu_features"]))
    if missing:
        return "missing_cpu_features", (
            f"this host lacks CPU feature(s) {', '.join(missing)} that the lock file needs"
        )
    return None


def validate(path_or_text: str | os.PathLike[str]) -> None:
    """Check this host against a lock file (a path, or the JSON text itself).

    Raises ``LockMismatchError`` (``reason`` = ``accelerator_mismatch``,
    ``insufficient_gpus`` or ``missing_cpu_features``) when the hardware does
    not satisfy it, ``ConfigError`` when the lock file is unreadable or malformed.
    """
    lock = load(path_or_text)
    found = mismatch(lock["hardware"], hardware.identity())
    if found is not None:
        reason, text = found
        raise LockMismatchError(reason, f"{reason}: {text}")


def parse_dependency_args(args: Sequence[str]) -> dict[str, str]:
    """``["torch=2.3.1", "numpy==1.26"]`` -> ``{"torch": "2.3.1", "numpy": "1.26"}``."""
    dependencies: dict[str, str] = {}
    for arg in args:
        name, sep, version = arg.partition("=")
        version = version.lstrip("=")
        if not sep or not name.strip() or not version.strip():
            raise ConfigError("dependency", arg, "NAME=VERSION")
        dependencies[name.strip()] = version.strip()
    return dependencies


def validate_command(path_or_text: str | os.PathLike[str]) -> tuple[int, str]:
    """(exit code, one line) for ``lock validate``: 0 ok, 1 mismatch, 2 unusable lock file."""
    try:
        validate(path_or_text)
    except LockMismatchError as exc:
        return 1, str(exc)
    except ConfigError as exc:
        return 2, str(exc)
    return 0, "ok: this host satisfies the lock file"
