"""Checkpoints: atomic writes, verified round trips, one-line errors, no pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from seguncert.config import Config, ModelConfig
from seguncert.data.common import DatasetMeta
from seguncert.errors import CheckpointError
from seguncert.io import atomic
from seguncert.io import checkpoint as ck
from seguncert.io.resume import read_resume_state, write_resume_state
from seguncert.models.build import build_model
from seguncert.train.state import capture_rng_state, restore_rng_state

PACKAGE = Path(__file__).resolve().parents[2] / "seguncert"


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
    atomic.atomic_write_text(target, "old")

    def explode(tmp: Path):
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.atomic_write(target, explode)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_round_trip_rebuilds_same_model_and_outputs(tmp_path):
    model, sidecar = save_tiny(tmp_path)
    info = json.loads(sidecar.read_text())
    assert info["format"] == ck.FORMAT and info["kind"] == "segmentation"
    assert info["class_names"] == ["a", "b", "c"] and info["calibration"] is None
    assert info["epoch"] == 3 and info["metrics"] == {"miou": 0.5}
    assert info["code_version"]["seguncert"]
    assert info["meta"]["mean"] == list(DatasetMeta().mean)
    weights = weights_file(tmp_path)
    assert info["weights_file"] == weights.name and info["weights_sha256"].startswith(
        weights.name.split(".")[1]
    )
    for path in (tmp_path, tmp_path / "best.json", weights):
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
        assert linfo["weights_path"] == str(weights)


def test_run_folder_falls_back_to_last(tmp_path):
    save_tiny(tmp_path, "last")
    _, info = ck.load_checkpoint(tmp_path)
    assert info["sidecar_path"].endswith("last.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.load_checkpoint(tmp_path / "empty")


def weights_file(folder: Path, name: str = "best") -> Path:
    (path,) = [p for p in folder.glob(f"{name}.*.safetensors") if ".state." not in p.name]
    return path


def one_line_error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        ck.load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_weights(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    w = weights_file(tmp_path)
    w.write_bytes(w.read_bytes()[:-100])
    msg = one_line_error(sidecar)
    assert w.name in msg and "SHA-256" in msg


def test_tampered_weights(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    w = weights_file(tmp_path)
    data = bytearray(w.read_bytes())
    data[-5] ^= 0x01  # one flipped bit inside a tensor
    w.write_bytes(bytes(data))
    assert w.name in one_line_error(sidecar)


def test_missing_weights_and_sidecar(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    weights_file(tmp_path).unlink()
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
    assert weights_file(tmp_path).name in msg and "shape" in msg


def test_update_sidecar_is_atomic_and_keeps_weights_valid(tmp_path):
    _, sidecar = save_tiny(tmp_path)
    ck.update_sidecar(tmp_path, calibration={"kind": "temperature"})
    _, info = ck.load_checkpoint(tmp_path)
    assert info["calibration"] == {"kind": "temperature"}
    with pytest.raises(CheckpointError, match="weights_sha256"):
        ck.update_sidecar(sidecar, weights_sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best.json", weights_file(tmp_path).name]
    )


def test_saving_again_replaces_old_files_only_after_the_sidecar(tmp_path):
    model, _ = save_tiny(tmp_path)
    first = weights_file(tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    ck.save_checkpoint(tmp_path, "best", model, meta=DatasetMeta(), config=Config())
    second = weights_file(tmp_path)
    assert second != first and not first.exists()
    assert json.loads((tmp_path / "best.json").read_text())["weights_file"] == second.name


def test_a_crash_before_the_sidecar_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    model, _ = save_tiny(tmp_path, "last")
    before = json.loads((tmp_path / "last.json").read_text())

    def crash(*a, **k):
        raise KeyboardInterrupt("kill -9 stand-in: the sidecar is never written")

    monkeypatch.setattr(ck, "atomic_write_json", crash)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, "last", model, meta=DatasetMeta(), config=Config(),
                           resume_state={"epoch": 9})  # fmt: skip
    monkeypatch.undo()
    assert json.loads((tmp_path / "last.json").read_text()) == before
    _, info = ck.load_checkpoint(tmp_path / "last.json")  # old weights still verify
    assert info["weights_file"] == before["weights_file"]


def test_a_model_built_directly_can_be_saved(tmp_path):
    from seguncert.models.unet import BayesianUNet

    model = BayesianUNet(num_classes=3, decoder_channels=[8, 8, 8, 8, 8], dropout="classifier")
    ck.save_checkpoint(tmp_path, "best", model, meta=DatasetMeta(), config=Config())
    loaded, _ = ck.load_checkpoint(tmp_path)
    assert loaded.spec == model.spec
    with pytest.raises(CheckpointError, match="no .spec"):
        ck.save_checkpoint(tmp_path, "x", torch.nn.Conv2d(1, 1, 1), meta=DatasetMeta(), config={})


def test_resume_state_round_trip_exact(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    model(torch.randn(2, 3, 16, 16))["logits"].sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "epoch": 4, "best": {"score": float("-inf")}}
    state["rng"] = [capture_rng_state()]
    entry = write_resume_state(tmp_path, "last", state)
    back = read_resume_state(tmp_path, entry)
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
    entry = write_resume_state(tmp_path, "last", {"t": torch.arange(10.0)})
    (f,) = tmp_path.glob("last.state.*.safetensors")
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=re.escape(f.name)):
        read_resume_state(tmp_path, entry)
    doc = tmp_path / entry["file"]
    doc.write_text(doc.read_text().replace('"epoch"', '"epoch "'))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_resume_state(tmp_path, entry)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        read_resume_state(tmp_path, None)


def test_package_never_unpickles():
    """No torch.load / pickle anywhere: weights and state are safetensors + JSON."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"torch\.load\(|import pickle|weights_only", text), path.name
