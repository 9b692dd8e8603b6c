"""The console entry points run the tools of the checkout."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["train", "evaluate", "infer", "demo"])
def test_entry_point_runs_the_tool(name):
    code = f"import sys; sys.argv = ['seguncert-{name}', '--help']; from seguncert.cli import {name}; {name}()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert "usage:" in r.stdout and f"{name}.py" in r.stdout


def test_setup_cfg_declares_them():
    from configparser import ConfigParser
    from pathlib import Path

    cfg = ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    for name in ("train", "evaluate", "infer", "demo"):
        assert f"seguncert-{name} = seguncert.cli:{name}" in scripts


def test_missing_tool_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from seguncert import cli

    monkeypatch.setattr(cli, "TOOLS", tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.train()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train.py not found" in err[0]
