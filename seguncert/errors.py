"""User-facing errors: one line, naming the problem, exit status 2.

Library code raises :class:`SeguncertError` (or a subclass) for anything a user can fix
(bad path, bad config key, corrupt checkpoint). Tools wrap their ``main`` in
:func:`run_cli`, which prints ``error: <message>`` on one line and exits with status 2
instead of showing a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class SeguncertError(Exception):
    """An error caused by user input; its message is shown as one line."""


class ConfigError(SeguncertError):
    """Bad configuration file, key or value."""


class DataError(SeguncertError):
    """Missing, unreadable or inconsistent data on disk."""


class CheckpointError(SeguncertError):
    """A checkpoint that is missing, truncated, tampered with or of the wrong kind."""


def one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a tool's ``main`` and turn user errors into a one-line message and exit 2.

    Set ``SEGUNCERT_DEBUG=1`` to get the full traceback instead.
    """
    try:
        code = main()
    except SeguncertError as e:
        if os.environ.get("SEGUNCERT_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
