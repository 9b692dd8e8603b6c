"""Frames through a predictor at the checkpoint's training size: shrink, sample, upsample."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seguncert.config import ModelConfig
from seguncert.inference.frames import (
    FramePredictor,
    TemporalPredictor,
    frames_to_batch,
    network_size,
    shrink,
    upsample_maps,
)
from seguncert.models.build import build_model
from seguncert.uncertainty.sampler import MCSampler
from seguncert.uncertainty.temporal import TemporalMC

META = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "class_names": ["a", "b", "c"]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", encoder="resnet18", num_classes=3,
                      decoder_channels=[16, 8, 8, 8, 8], dropout="decoder")  # fmt: skip
    return build_model(cfg).eval()


def frames(n, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_network_size_keeps_aspect_and_matches_the_training_pixel_count():
    assert network_size((360, 480), (180, 240)) == (180, 240)
    h, w = network_size((720, 1280), (180, 240))
    assert abs(h * w - 180 * 240) < 400 and abs(w / h - 1280 / 720) < 0.01
    assert network_size((100, 120), (180, 240)) == (100, 120)  # never enlarged
    assert network_size((360, 480), None) == (360, 480)
    assert min(network_size((2000, 40), (8, 8))) == 32


def test_upsample_maps_crops_resizes_and_takes_the_argmax_of_the_probabilities():
    probs = torch.rand(2, 3, 32, 64).softmax(1)
    out = {"probs": probs, "pred": probs.argmax(1), "entropy": torch.rand(2, 32, 64)}
    same = upsample_maps(out, (30, 60), (30, 60))
    assert same["entropy"].shape == (2, 30, 60) and torch.equal(
        same["pred"], out["pred"][:, :30, :60]
    )
    up = upsample_maps(out, (30, 60), (60, 120))
    ref = F.interpolate(probs[..., :30, :60], size=(60, 120), mode="bilinear", align_corners=False)
    assert torch.allclose(up["probs"], ref) and torch.equal(up["pred"], ref.argmax(1))
    assert up["entropy"].shape == (2, 60, 120)


def test_a_predictor_at_the_training_size_equals_sampling_the_shrunk_frames(model):
    fs = frames(2)
    small_hw = (32, 48)
    sampler = MCSampler(model, samples=3, seed=4)
    got = FramePredictor(sampler, META, "cpu", net_size=small_hw)(fs)
    x = frames_to_batch(shrink(fs, small_hw), META, "cpu")
    with torch.inference_mode():
        ref = upsample_maps(sampler(x), small_hw, (64, 96))
    assert len(got) == 2 and got[0]["epistemic"].shape == (64, 96)
    for i in range(2):
        for k in ("pred", "entropy", "aleatoric", "epistemic"):
            np.testing.assert_allclose(got[i][k], ref[k][i].float().numpy(), atol=1e-5)
    assert not np.allclose(
        got[0]["entropy"], FramePredictor(sampler, META, "cpu")(fs)[0]["entropy"]
    )


def test_the_native_size_is_unchanged_and_temporal_maps_come_back_at_frame_size(model):
    fs = frames(3)
    sampler = MCSampler(model, samples=2, seed=1)
    native = FramePredictor(sampler, META, "cpu")(fs)
    same = FramePredictor(sampler, META, "cpu", net_size=(64, 96))(fs)
    for a, b in zip(native, same):
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    temporal = TemporalPredictor(TemporalMC(model, 2, seed=1), META, "cpu", net_size=(32, 48))
    out = [temporal([f])[0] for f in fs]
    assert all(o["epistemic"].shape == (64, 96) and o["pred"].shape == (64, 96) for o in out)
    assert all(np.isfinite(o["epistemic"]).all() and (o["epistemic"] >= 0).all() for o in out)
