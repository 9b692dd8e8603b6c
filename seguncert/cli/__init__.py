"""Command-line tools. Each module has ``main(argv=None) -> int``; ``tools/<name>.py`` in a
checkout and the installed commands ``seguncert-<name>`` both run it through :func:`run_cli`
(one-line errors, exit status 2), so the commands work from any install, editable or not. The
console-script functions are in :mod:`seguncert.cli.commands`.
"""

from __future__ import annotations

import importlib

from ..errors import run_cli

TOOLS = ("train", "evaluate", "infer", "demo", "select_frames", "render_synthetic")


def run_tool(name: str, argv=None) -> None:
    """Run tool ``name`` as a program (exits)."""
    module = importlib.import_module(f"seguncert.cli.{name}")
    run_cli(lambda: module.main(argv))
