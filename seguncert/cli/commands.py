"""The installed console commands (``seguncert-<tool>``, setup.cfg). They live apart from the
package ``__init__`` so that no function there shadows the tool modules of the same names."""

from __future__ import annotations

from . import run_tool


def train() -> None:
    run_tool("train")


def evaluate() -> None:
    run_tool("evaluate")


def infer() -> None:
    run_tool("infer")


def demo() -> None:
    run_tool("demo")


def select_frames() -> None:
    run_tool("select_frames")
