"""What ``celery -A tests.apps.cli_app snakepit ...`` loads in the command-line tests.

The store comes from ``SNAKEPIT_STORE_URL`` / ``SNAKEPIT_KEY_PREFIX`` (read by
the settings), so each test points the subprocess at its own keys.
"""

from __future__ import annotations

from tests.support.cli import make_app

app = make_app()
