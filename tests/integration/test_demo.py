"""``make demo`` is part of the suite: the tour runs, every check holds, nothing is left behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from snakepit_celery.testing.redis_server import redis_answers

ROOT = Path(__file__).resolve().parents[2]


def _demo_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "examples.demo_app" in cmdline:
            found.append(process)
    return found


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_demo_tour_holds_every_check_and_leaves_nothing_running() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "All checks held" in output
    assert "[FAIL]" not in output
    steps = ("shared by two processes", "RetryPolicy", "segfaults", "quarantine", "GPU routing")
    for step in (*steps, "status", "SIGKILLed while its task runs"):
        assert step in output
    url = re.search(r"Redis at (redis://\S+)", output)
    assert url is not None
    if "private server" in output:
        assert not redis_answers(url.group(1), timeout=0.2)
    assert _demo_processes() == []
