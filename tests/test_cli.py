"""The tools are package modules: tools/*.py wrappers and console commands both run them, and a
regular (non-editable) install has working commands."""

from __future__ import annotations

import os
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "evaluate", "infer", "demo", "select_frames")


def command(tool: str) -> str:
    return "seguncert-" + tool.replace("_", "-")


@pytest.mark.parametrize("name", COMMANDS)
def test_tool_wrapper_runs_the_package_tool(name):
    r = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), "--help"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-1000:]
    assert f"usage: {command(name)}" in r.stdout


def test_setup_cfg_declares_them():
    cfg = ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    for name in COMMANDS:
        assert f"{command(name)} = seguncert.cli.commands:{name}" in scripts


def test_tool_modules_are_not_shadowed_by_the_console_functions():
    """``from seguncert.cli import infer`` must be the tool module (the demo calls its main)."""
    import importlib

    import seguncert.cli as cli

    for name in COMMANDS:
        importlib.import_module(f"seguncert.cli.{name}")
        assert callable(getattr(getattr(cli, name), "main", None)), name


@pytest.mark.slow
def test_commands_work_from_a_regular_install(tmp_path):
    """Build the wheel, install it (not editable) into a folder of its own and run the commands
    from elsewhere: nothing may depend on the checkout's tools/ or on an editable install."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = tmp_path / "wheels"
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("seguncert-*.whl")
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(target))
    away = tmp_path / "elsewhere"
    away.mkdir()
    for name in ("train", "evaluate", "infer", "select_frames"):
        r = subprocess.run([str(target / "bin" / command(name)), "--help"], cwd=away,
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr[-1000:]
        assert f"usage: {command(name)}" in r.stdout
    probe = "import seguncert, sys; print(seguncert.__file__)"
    r = subprocess.run([sys.executable, "-c", probe], cwd=away, env=env, capture_output=True,
                       text=True)  # fmt: skip
    assert r.stdout.strip().startswith(str(target)), r.stdout  # the installed copy ran
