"""Run every ``benchmarks/bench_*.py`` module's ``main()`` and record it in RESULTS.md.

``python -m benchmarks`` runs all of them; ``python -m benchmarks breaker health``
runs only the modules whose names contain one of the words.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nWritten by `python -m benchmarks` (`make bench`).\n"


def _section(name: str, body: str) -> str:
    return f"<!-- bench:{name} -->\n## {name}\n\n{body.strip()}\n<!-- /bench:{name} -->\n"


def record(name: str, body: str) -> None:
    """Replace (or append) the section of benchmark ``name`` in RESULTS.md."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n?", re.S
    )
    section = _section(name, body)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    names = sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    if argv:
        names = [name for name in names if any(word in name for word in argv)]
    for name in names:
        started = time.perf_counter()
        body = importlib.import_module(f"benchmarks.{name}").main()
        took = time.perf_counter() - started
        body += f"\n\n_{name} took {took:.1f} s; run {time.strftime('%Y-%m-%d %H:%M')}._"
        print(_section(name, body), flush=True)
        record(name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
