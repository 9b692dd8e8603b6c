#!/usr/bin/env python
"""`python tools/select_frames.py --help`: runs seguncert.cli.select_frames (also a command)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without installing

from seguncert.cli import run_tool  # noqa: E402

if __name__ == "__main__":
    run_tool("select_frames")
