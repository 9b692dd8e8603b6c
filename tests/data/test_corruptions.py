"""CamVid-C corruptions and the corrupted-split writer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from seguncert.data.camvid import CamVidDataset, read_label, read_rgb, resize_nearest
from seguncert.data.common import CAMVID_PALETTE
from seguncert.data.corrupted_split import MANIFEST, write_corrupted_split
from seguncert.data.corruptions import CONTRAST, CORRUPTIONS, GAUSS_STD, JPEG_QUALITY, corrupt
from seguncert.data.synthetic import render_frame
from seguncert.errors import ConfigError, DataError

REQUIRED = {
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "defocus_blur",
    "fog",
    "rain",
    "snow",
    "darkness",
    "contrast",
    "jpeg",
}
# Noisy ones (motion_blur draws only an angle, which rounds to one kernel at small sizes).
RANDOM = ("gaussian_noise", "shot_noise", "fog", "rain", "snow", "darkness")
NAMES = list(CORRUPTIONS)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return render_frame(0, (120, 160))["image"]


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_required_corruptions_present():
    assert REQUIRED <= set(CORRUPTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_keeps_shape_dtype_and_changes_image(frame, name):
    before = frame.copy()
    for severity in (1, 5):
        out = corrupt(frame, name, severity, seed=0)
        assert out.shape == frame.shape and out.dtype == np.uint8
        assert mad(out, frame) > 0.5, (name, severity)
    assert np.array_equal(frame, before)  # input untouched


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes(frame, name):
    a = corrupt(frame, name, 3, seed=7, index=2)
    b = corrupt(frame.copy(), name, 3, seed=7, index=2)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", RANDOM)
def test_seed_and_index_change_random_corruptions(frame, name):
    a = corrupt(frame, name, 3, seed=0)
    assert not np.array_equal(a, corrupt(frame, name, 3, seed=1))
    assert not np.array_equal(a, corrupt(frame, name, 3, seed=0, index=1))


def test_global_random_state_neither_read_nor_changed(frame):
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    first = [corrupt(frame, n, 4, seed=3) for n in NAMES]
    states = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone())
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    second = [corrupt(frame, n, 4, seed=3) for n in NAMES]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    [corrupt(frame, n, 4, seed=3) for n in NAMES]
    assert np.array_equal(np.random.get_state()[1], states[0])
    assert random.getstate() == states[1]
    assert torch.equal(torch.get_rng_state(), states[2])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_severity_is_monotonic(frame, name, seed):
    d = [mad(corrupt(frame, name, s, seed=seed), frame) for s in range(1, 6)]
    assert all(b >= a for a, b in zip(d, d[1:])), (name, np.round(d, 2))
    assert d[-1] > 1.2 * d[0], (name, np.round(d, 2))


def test_contrast_scales_about_the_mean(frame):
    x = frame.astype(np.float64) / 255
    want = (x - x.mean()) * CONTRAST[2] + x.mean()
    got = corrupt(frame, "contrast", 3, seed=0).astype(np.float64) / 255
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-9


def test_gaussian_noise_has_its_std():
    grey = np.full((200, 200, 3), 128, np.uint8)  # far from 0/255, so clipping is negligible
    noise = corrupt(grey, "gaussian_noise", 3, seed=0).astype(np.float64) - 128
    assert abs(noise.mean()) < 0.5
    assert noise.std() == pytest.approx(GAUSS_STD[2] * 255, rel=0.03)


def test_jpeg_matches_opencv_round_trip(frame):
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[3]])
    want = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # channel order does not matter for a loss
    assert ok and mad(corrupt(frame, "jpeg", 4, seed=0), want) < 1.0


@pytest.mark.parametrize(
    "name, severity", [("nope", 3), ("fog", 0), ("fog", 6), ("fog", 2.5), ("fog", True)]
)
def test_bad_name_or_severity_is_one_line_config_error(frame, name, severity):
    with pytest.raises(ConfigError) as e:
        corrupt(frame, name, severity, seed=0)
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg
    if name == "nope":
        assert all(n in msg for n in NAMES)


def test_bad_image_is_data_error():
    with pytest.raises(DataError):
        corrupt(np.zeros((8, 8, 3), np.float32), "fog", 1, seed=0)
    with pytest.raises(DataError):
        corrupt(np.zeros((8, 8), np.uint8), "fog", 1, seed=0)


# --- write_corrupted_split on a tiny fake CamVid layout -------------------------------------


def _fake_camvid(root: Path, palette: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    for i in range(3):
        image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        cv2.rectangle(image, (10, 10), (40, 50), (200, 40, 40), -1)
        ids = ((np.arange(60)[:, None] // 6 + np.arange(80)[None] // 8 + i) % 12).astype(np.uint8)
        ids[0, :12] = np.arange(12)  # every value 0..11 (11 = void) occurs
        cv2.imwrite(str(root / "val" / f"f{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        label = np.uint8(CAMVID_PALETTE)[ids][..., ::-1] if palette else ids
        cv2.imwrite(str(root / "valannot" / f"f{i}.png"), label)
    return root


def _mtimes(folders) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for f in folders for p in f.rglob("*") if p.is_file()}


def test_write_layout_labels_manifest_and_images(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    dest = tmp_path / "camvid_c"
    folders = write_corrupted_split(
        root, "val", dest, ["fog", "rain"], [1, 3], seed=5, progress=False
    )
    assert folders == [dest / n / str(s) for n in ("fog", "rain") for s in (1, 3)]
    clean = CamVidDataset(root, "val")
    for folder in folders:
        name, severity = folder.parent.name, int(folder.name)
        assert sorted(p.name for p in (folder / "val").iterdir()) == ["f0.png", "f1.png", "f2.png"]
        for i in range(3):
            src = root / "valannot" / f"f{i}.png"
            assert (folder / "valannot" / src.name).read_bytes() == src.read_bytes()
            want = corrupt(clean.raw(i)["image"], name, severity, seed=5, index=i)
            assert np.array_equal(read_rgb(folder / "val" / f"f{i}.png"), want)
        m = json.loads((folder / MANIFEST).read_text())
        assert (m["name"], m["severity"], m["seed"], m["split"]) == (name, severity, 5, "val")
        assert m["size"] is None and m["source_root"] == str(root.resolve())
        assert m["complete"] is True and m["format_version"] == 1
        assert [f["image"] for f in m["files"]] == [f"val/f{i}.png" for i in range(3)]
        assert not list(folder.rglob("*.tmp"))
        ds = CamVidDataset(folder, "val")
        assert all(np.array_equal(ds.raw(i)["label"], clean.raw(i)["label"]) for i in range(3))


def test_second_call_reuses_and_missing_file_is_restored(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    dest = tmp_path / "c"
    args = (root, "val", dest, ["gaussian_noise"], [2, 4])
    folders = write_corrupted_split(*args, seed=0, progress=False)
    before = _mtimes(folders)
    assert write_corrupted_split(*args, seed=0, progress=False) == folders
    assert _mtimes(folders) == before
    lost = folders[0] / "val" / "f1.png"
    data = lost.read_bytes()
    lost.unlink()
    write_corrupted_split(*args, seed=0, progress=False)
    assert lost.read_bytes() == data
    after = _mtimes(folders)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {lost, folders[0] / MANIFEST}


@pytest.mark.parametrize(
    "change, field", [({"seed": 1}, "seed"), ({"limit": 2}, "files"), ({"size": (30, 40)}, "size")]
)
def test_mismatched_folder_is_refused(tmp_path, change, field):
    root = _fake_camvid(tmp_path / "camvid")
    dest = tmp_path / "c"
    write_corrupted_split(root, "val", dest, ["jpeg"], [1], seed=0, progress=False)
    before = _mtimes([dest])
    with pytest.raises(DataError) as e:
        write_corrupted_split(
            root, "val", dest, ["jpeg"], [1], **{"seed": 0, **change}, progress=False
        )
    msg = str(e.value)
    assert "\n" not in msg and str(dest / "jpeg" / "1") in msg and repr(field) in msg
    assert _mtimes([dest]) == before


def test_foreign_folder_is_refused(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    (tmp_path / "c" / "fog" / "2").mkdir(parents=True)
    (tmp_path / "c" / "fog" / "2" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="no manifest"):
        write_corrupted_split(root, "val", tmp_path / "c", ["fog"], [2], progress=False)


def test_bad_arguments_are_config_errors_before_writing(tmp_path):
    root = _fake_camvid(tmp_path / "camvid")
    for kwargs in ({"names": ["fgo"]}, {"severities": [0]}, {"size": (0, 10)}, {"limit": 0}):
        args = {"names": ["fog"], "severities": [1], **kwargs}
        with pytest.raises(ConfigError):
            write_corrupted_split(root, "val", tmp_path / "c", progress=False, **args)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("palette", [False, True])
def test_size_and_limit(tmp_path, palette):
    root = _fake_camvid(tmp_path / "camvid", palette=palette)
    (folder,) = write_corrupted_split(
        root, "val", tmp_path / "c", ["defocus_blur"], [5], size=(30, 40), limit=2, progress=False
    )
    assert sorted(p.name for p in (folder / "val").iterdir()) == ["f0.png", "f1.png"]
    assert sorted(p.name for p in (folder / "valannot").iterdir()) == ["f0.png", "f1.png"]
    for i in range(2):
        assert read_rgb(folder / "val" / f"f{i}.png").shape == (30, 40, 3)
        want = resize_nearest(read_label(root / "valannot" / f"f{i}.png"), (30, 40))
        assert np.array_equal(read_label(folder / "valannot" / f"f{i}.png"), want)
    assert json.loads((folder / MANIFEST).read_text())["size"] == [30, 40]


@pytest.mark.realdata
def test_real_camvid_val_every_corruption(camvid_root, tmp_path):
    if not (camvid_root / "val").is_dir():
        pytest.skip(f"no val split in {camvid_root}")
    folders = write_corrupted_split(
        camvid_root, "val", tmp_path, NAMES, [3], limit=2, progress=False
    )
    clean = CamVidDataset(camvid_root, "val")
    for folder in folders:
        for i, (image_path, _) in enumerate(clean.pairs[:2]):
            out = read_rgb(folder / "val" / f"{image_path.stem}.png")
            src = clean.raw(i)["image"]
            assert out.dtype == np.uint8 and out.shape == src.shape
            assert mad(out, src) > 0.5, folder
