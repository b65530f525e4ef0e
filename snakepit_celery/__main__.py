"""``python -m snakepit_celery hardware [--json]`` and ``... lock generate|validate``.

Works without a Celery app. Exit codes: 0 ok, 1 lock mismatch, 2 usage error
(including an unreadable or malformed lock or override file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from snakepit_celery import hardware, lockfile
from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware.report import hardware_json, hardware_table

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_celery",
        description="Hardware detection and lock files of snakepit_celery.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hw = commands.add_parser("hardware", help="show the detected hardware")
    hw.add_argument("--json", action="store_true", help="print detect().as_dict() as JSON")
    lock = commands.add_parser("lock", help="generate or validate a hardware lock file")
    actions = lock.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="print a lock file for this host")
    gen.add_argument("dependencies", nargs="*", metavar="NAME=VERSION")
    val = actions.add_parser("validate", help="check this host against a lock file")
    val.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "hardware":
            info = hardware.detect()
            print(hardware_json(info) if args.json else hardware_table(info))
            return 0
        if args.action == "generate":
            print(lockfile.generate(lockfile.parse_dependency_args(args.dependencies)))
            return 0
        code, line = lockfile.validate_command(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(line, file=sys.stdout if code < 2 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
