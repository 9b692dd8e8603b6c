"""Checkpoints: atomic writes, verified round trips, one-line errors, no pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from seguncert.config import Config, ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.engine import checkpoint as ck
from seguncert.engine.resume import (
    capture_rng_state,
    load_resume_state,
    restore_rng_state,
    save_resume_state,
)
from seguncert.errors import CheckpointError
from seguncert.models.build import build_model

ENGINE = Path(__file__).resolve().parents[2] / "seguncert" / "engine"


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="segnet_basic", width=8, num_classes=3, dropout="central", dropout_p=0.2)
    return build_model(cfg)


def save_tiny(tmp_path: Path, name: str = "best"):
    model = tiny_model()
    meta = DatasetMeta(class_names=["a", "b", "c"], palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    sidecar = ck.save_checkpoint(
        tmp_path, name, model, meta=meta, config=Config(), metrics={"miou": 0.5}, epoch=3
    )
    return model, sidecar


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.json"
    ck.atomic_write_text(target, "old")

    def explode(tmp: Path):
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.atomic_write(target, explode)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_round_trip_rebuilds_same_model_and_outputs(tmp_path):
    model, sidecar = save_tiny(tmp_path)
    info = json.loads(sidecar.read_text())
    assert info["format"] == ck.FORMAT and info["kind"] == "segmentation"
    assert info["class_names"] == ["a", "b", "c"] and info["temperature"] is None
    assert info["epoch"] == 3 and info["metrics"] == {"miou": 0.5}
    assert info["code_version"]["seguncert"]
    assert info["meta"]["mean"] == list(DatasetMeta().mean)
    for path in (tmp_path, tmp_path / "best.json", tmp_path / "best.safetensors"):
        loaded, linfo = ck.load_checkpoint(path)
        assert not loaded.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k
        x = torch.randn(2, 3, 32, 32)
        model.eval()
        with torch.no_grad():
            a, b = model(x), loaded(x)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert linfo["weights_path"].endswith("best.safetensors")


def test_run_folder_falls_back_to_last(tmp_path):
    save_tiny(tmp_path, "last")
    _, info = ck.load_checkpoint(tmp_path)
    assert info["sidecar_path"].endswith("last.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.load_checkpoint(tmp_path / "empty")


def one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_weights(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    w = tmp_path / "best.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    msg = one_line_error(sidecar)
    assert "best.safetensors" in msg and "SHA-256" in msg


def test_tampered_weights(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    w = tmp_path / "best.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01  # one flipped bit inside a tensor
    w.write_bytes(bytes(data))
    assert "best.safetensors" in one_line_error(sidecar)


def test_missing_weights_and_sidecar(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    (tmp_path / "best.safetensors").unlink()
    assert "not found" in one_line_error(sidecar)
    assert "not found" in one_line_error(tmp_path / "nope.json")


def test_wrong_format_and_garbage_sidecar(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    info = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(dict(info, format="someone-else/9")))
    assert "someone-else/9" in one_line_error(sidecar)
    sidecar.write_text(json.dumps({"epoch": 1}))
    assert "best.json" in one_line_error(sidecar)
    sidecar.write_text('{"format": ')
    assert "best.json" in one_line_error(sidecar)


def test_spec_that_does_not_fit_weights(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    info = json.loads(sidecar.read_text())
    info["model_spec"]["num_classes"] = 5
    sidecar.write_text(json.dumps(info))
    msg = one_line_error(sidecar)
    assert "best.safetensors" in msg and "shape" in msg


def test_update_sidecar_is_atomic_and_keeps_weights_valid(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    ck.update_sidecar(tmp_path, temperature=1.75)
    _, info = ck.load_checkpoint(tmp_path)
    assert info["temperature"] == 1.75
    with pytest.raises(CheckpointError, match="weights_sha256"):
        ck.update_sidecar(sidecar, weights_sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]


def test_resume_state_round_trip_exact(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    model(torch.randn(2, 3, 16, 16))["logits"].sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "epoch": 4, "best": {"score": float("-inf")}}
    state["rng"] = [capture_rng_state()]
    save_resume_state(tmp_path, state)
    back = load_resume_state(tmp_path)
    assert back["epoch"] == 4 and back["best"]["score"] == float("-inf")
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert set(back["optimizer"]["state"]) == set(opt.state_dict()["state"])  # int keys kept
    for k, s in opt.state_dict()["state"].items():
        assert all(torch.equal(s[n], back["optimizer"]["state"][k][n]) for n in s)
    expected = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    restore_rng_state(back["rng"][0])
    again = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    assert len(opt2.state) == len(opt.state)


def test_resume_state_tampered(tmp_path):
    save_resume_state(tmp_path, {"t": torch.arange(10.0)})
    f = tmp_path / "last.state.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="last.state.safetensors"):
        load_resume_state(tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_resume_state(tmp_path / "elsewhere")


def test_engine_never_unpickles():
    """No torch.load / pickle anywhere in the engine: weights and state are safetensors+JSON."""
    for path in ENGINE.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"torch\.load\(|import pickle|weights_only", text), path.name
