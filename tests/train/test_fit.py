"""fit(): run folder contents, exact resume, time budget (tiny synthetic runs on the CPU)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seguncert.config import config_from_dict
from seguncert.errors import CheckpointError, ConfigError
from seguncert.io import checkpoint as ck
from seguncert.train import fit as fit_mod
from seguncert.train.fit import fit
from seguncert.train.loader import build_loader, set_loader_epoch

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "data": {"dataset": "synthetic", "synthetic_train": 8, "synthetic_val": 4,
             "synthetic_size": [32, 32], "scale_range": [1.0, 1.0], "hflip": False,
             "color_jitter": 0.0},
    "model": {"arch": "segnet_basic", "width": 8, "num_classes": 11, "dropout": "central",
              "dropout_p": 0.3},
    "loss": {"aleatoric_samples": 2, "class_weights": "none"},
    "optim": {"lr": 0.01, "warmup_iters": 1, "schedule": "poly"},
    "train": {"epochs": 2, "batch_size": 4, "val_every": 1, "seed": 3, "threads": 1},
}  # fmt: skip


def tiny_cfg(*overrides):
    return config_from_dict(json.loads(json.dumps(TINY)), list(overrides))


def weights(run_dir):
    info = json.loads((run_dir / "last.json").read_text())
    return load_file(str(run_dir / info["weights_file"]))


def test_fit_writes_run_folder(tmp_path):
    summary = fit(tiny_cfg(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"best.json", "last.json", "config.yaml", "log.csv", "tb"} <= names
    last = json.loads((tmp_path / "last.json").read_text())
    state = last["resume_state"]["file"]
    expected = {last["weights_file"], state, state.replace(".json", ".safetensors")}
    assert expected | {json.loads((tmp_path / "best.json").read_text())["weights_file"]} == {
        n for n in names if n.split(".")[0] in ("best", "last") and n.count(".") > 1
    }  # one set of files per checkpoint: older epochs' files are gone
    assert not [n for n in names if n.endswith(".tmp") or "pending" in n]
    assert summary["epochs_completed"] == 2 and summary["best_metric"] == "miou"
    assert summary["best_value"] == summary["best_metrics"]["miou"]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"] and "val_miou" in rows[0]
    assert "train_loss" in rows[0] and "train_lr" in rows[0]
    model, info = ck.load_checkpoint(tmp_path / "last.json")
    assert info["epoch"] == 1 and info["kind"] == "segmentation"
    assert info["meta"]["class_names"][0] == "Sky" and info["config"]["train"]["seed"] == 3
    assert any((tmp_path / "tb").iterdir())


AUGMENT = ("data.scale_range=[0.8,1.2]", "data.hflip=true", "data.color_jitter=0.2")


@pytest.mark.parametrize(
    "extra",
    [(), AUGMENT, (*AUGMENT, "data.num_workers=1")],
    ids=["no-augmentation", "augmentation", "augmentation-in-a-worker"],
)
def test_resume_is_exact(tmp_path, monkeypatch, extra):
    straight, parted = tmp_path / "straight", tmp_path / "parted"
    fit(tiny_cfg("train.epochs=3", *extra), straight)

    real = fit_mod.train_one_epoch

    def killed_in_second_epoch(*args, **kwargs):
        if args[2] == 1:  # epoch: the process dies mid-epoch, after epoch 0 was saved
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_mod, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg("train.epochs=3", *extra), parted)
    assert json.loads((parted / "last.json").read_text())["epoch"] == 0
    monkeypatch.setattr(fit_mod, "train_one_epoch", real)
    fit(tiny_cfg("train.epochs=3", *extra), parted, resume=True)
    a, b = weights(straight), weights(parted)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader(open(parted / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]


def test_time_budget_cuts_the_epoch_and_still_saves(tmp_path):
    summary = fit(tiny_cfg("train.epochs=5", "train.max_minutes=0.0001"), tmp_path)
    assert summary["stopped_early"] and summary["epochs_completed"] == 1
    assert summary["train"]["iters"] == 1  # the budget was checked inside the epoch
    assert (tmp_path / "best.json").is_file()
    assert json.loads((tmp_path / "last.json").read_text())["resume_state"]


def test_time_budget_is_honoured(tmp_path):
    budget_s = 3.0
    summary = fit(tiny_cfg("train.epochs=1000", f"train.max_minutes={budget_s / 60}"), tmp_path)
    assert summary["stopped_early"] and summary["epochs_completed"] >= 2
    assert summary["minutes"] * 60 <= budget_s + 1.0  # slack: one slow iteration on a busy CPU


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        fit(tiny_cfg(), tmp_path, resume=True)


def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    fit(tiny_cfg("train.epochs=1"), tmp_path)
    before = (tmp_path / "last.json").read_text()
    with pytest.raises(ConfigError, match="already holds a training run.*--resume.*--overwrite"):
        fit(tiny_cfg("train.epochs=1"), tmp_path)
    assert (tmp_path / "last.json").read_text() == before
    with pytest.raises(ConfigError, match="already finished train.epochs=1"):
        fit(tiny_cfg("train.epochs=1"), tmp_path, resume=True)
    fit(tiny_cfg("train.epochs=1", "train.seed=4"), tmp_path, overwrite=True)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert (
        len(rows) == 1
        and json.loads((tmp_path / "last.json").read_text())["config"]["train"]["seed"] == 4
    )


def test_overwrite_into_a_folder_that_does_not_exist_yet(tmp_path):
    # the demo on a fresh clone trains with overwrite=True into demo_out/model, absent then
    out = tmp_path / "new" / "run"
    fit(tiny_cfg("train.epochs=1"), out, overwrite=True)
    assert (out / "best.json").is_file() and (out / "last.json").is_file()


@pytest.mark.parametrize("bad", ["train.epochs=0", "train.epochs=-1", "train.batch_size=0"])
def test_epochs_and_batch_size_are_checked_before_any_work(tmp_path, bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.") + "' must be >= 1"):
        fit(tiny_cfg(bad), tmp_path / "run")
    assert not (tmp_path / "run").exists()


KILL_SCRIPT = """
import json, sys, time
from pathlib import Path
import seguncert.train.loop as loop
from seguncert.config import config_from_dict
from seguncert.train.fit import fit

real_step, calls = loop.train_step, [0]

def step_then_pause(*args, **kwargs):
    # Pause (for the parent's kill -9) after step 18 of 36: the middle of epoch 2 of 3 with
    # 12 steps per epoch, whatever the machine's speed.
    out = real_step(*args, **kwargs)
    calls[0] += 1
    if calls[0] == 18:
        Path(sys.argv[2], "paused").write_text("")
        time.sleep(600)
    return out

loop.train_step = step_then_pause
cfg = config_from_dict(json.loads(sys.argv[1]), sys.argv[3:])
fit(cfg, sys.argv[2])
"""


def _run_and_kill(cfg: dict, out: Path, overrides: list[str]) -> None:
    """Start a training process, kill -9 it in the middle of its second epoch (it pauses there)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg), str(out), *overrides]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "paused").is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None and (out / "paused").is_file(), proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / "paused").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path, workers):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"].update(synthetic_train=24, scale_range=[0.8, 1.2], hflip=True, color_jitter=0.2)
    overrides = ["train.epochs=3", "train.batch_size=2", f"data.num_workers={workers}"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    fit(config_from_dict(json.loads(json.dumps(cfg)), overrides), straight)
    _run_and_kill(cfg, killed, overrides)
    saved_epoch = json.loads((killed / "last.json").read_text())["epoch"]
    assert saved_epoch == 0  # killed inside the second epoch: only the first (index 0) saved
    fit(config_from_dict(json.loads(json.dumps(cfg)), overrides), killed, resume=True)
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progress_lines_without_a_terminal(tmp_path, capsys):
    fit(tiny_cfg("train.epochs=1", "train.log_seconds=0"), tmp_path)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("epoch 1: ")]
    assert len(lines) >= 2, err  # one per iteration here (interval 0), before the epoch ends
    assert "img/s" in lines[0] and "loss" in lines[0] and "ETA" in lines[0]


def test_shuffle_depends_only_on_seed_and_epoch():
    ds = list(range(10))
    orders = []
    for _ in range(2):
        loader = build_loader(ds, batch_size=10, train=True, seed=5)
        seq = []
        for epoch in (0, 1, 2):
            set_loader_epoch(loader, 5, epoch)
            seq.append(next(iter(loader)).tolist())
        orders.append(seq)
    assert orders[0] == orders[1] and orders[0][0] != orders[0][1]


def test_set_loader_epoch_reseeds_transform():
    class Recorder:
        seeds: list[int] = []

        def set_random_seed(self, seed):
            self.seeds.append(seed)

    class Data(torch.utils.data.Dataset):
        transform = Recorder()

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return np.float32(i)

    loader = build_loader(Data(), 2, train=True, seed=1)
    for epoch in (0, 1, 0):
        set_loader_epoch(loader, 1, epoch)
    s = Recorder.seeds
    assert len(s) == 3 and s[0] == s[2] != s[1]
