"""Console entry points (``seguncert-train``, ``-evaluate``, ``-infer``, ``-demo``).

The tools are plain scripts in the checkout's ``tools/`` folder, readable top to bottom; these
entry points run them as ``__main__`` so an installed environment has them on its PATH. They
need the source checkout (``pip install -e .``, which ``make`` does).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _run(name: str) -> None:
    path = TOOLS / f"{name}.py"
    if not path.is_file():
        print(
            f"error: {path} not found; the seguncert-{name} command runs the tools of a source "
            "checkout (install it with `pip install -e .`)",
            file=sys.stderr,
        )
        raise SystemExit(2)  # the tools' exit status for user errors
    sys.argv[0] = str(path)
    runpy.run_path(str(path), run_name="__main__")


def train() -> None:
    _run("train")


def evaluate() -> None:
    _run("evaluate")


def infer() -> None:
    _run("infer")


def demo() -> None:
    _run("demo")
