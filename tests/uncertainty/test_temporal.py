"""TemporalMC: decay 0 == fresh MC, convergence on a static scene, flow warping and gating."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seguncert.errors import ConfigError, SeguncertError
from seguncert.uncertainty.sampler import MCSampler
from seguncert.uncertainty.temporal import TemporalMC


def _close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    grey = cv2.GaussianBlur(noise, (0, 0), 3)
    grey = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def test_decay_zero_equals_fresh_sampler(make_model):
    model = make_model(task="joint", hetero=True)
    g = torch.Generator().manual_seed(1)
    frames = [torch.randn(1, 3, 6, 7, generator=g) for _ in range(3)]
    temporal = TemporalMC(model, fresh_samples=3, decay=0.0)
    fresh = MCSampler(model, samples=3)
    for n, x in enumerate(frames):
        _close(temporal(x), fresh(x, first_sample=3 * n), atol=0)


def test_static_scene_converges_to_many_samples(make_model):
    model = make_model(task="joint", width=6)
    x = torch.randn(1, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    reference = MCSampler(model, samples=400, memory_budget_mb=64.0)(x)
    two = MCSampler(model, samples=2)(x)
    temporal = TemporalMC(model, fresh_samples=2, decay=0.9)
    for _ in range(40):
        out = temporal(x)
    assert temporal.effective_samples == pytest.approx(20.0)
    # the fused weight reaches K / (1 - decay) = 20 samples
    torch.testing.assert_close(
        temporal._history.seg.count, torch.full((1, 1, 10, 12), 20.0), rtol=0.02, atol=0
    )
    for key in ("probs", "entropy", "epistemic", "prob_var", "depth", "depth_epistemic_var"):
        err_two = (two[key] - reference[key]).abs().mean()
        err_temporal = (out[key] - reference[key]).abs().mean()
        assert err_temporal < 0.5 * err_two, key
    torch.testing.assert_close(out["entropy"], out["aleatoric"] + out["epistemic"])


def test_flow_on_static_frames_is_identity(make_model):
    model = make_model()
    x = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(3))
    frame = _texture(24, 32)
    plain = TemporalMC(model, fresh_samples=2, decay=0.8)
    flowed = TemporalMC(model, fresh_samples=2, decay=0.8, flow=True)
    for _ in range(4):
        a, b = plain(x, frame), flowed(x, frame)
    # Farneback returns sub-pixel noise (< 0.1 px) even for identical frames, so the warped
    # history is a slightly resampled copy: close on average, not bit-equal.
    for key in ("probs", "entropy", "aleatoric", "epistemic", "prob_var"):
        assert (a[key] - b[key]).abs().mean() < 5e-3, key
    assert (a["pred"] == b["pred"]).float().mean() > 0.97
    torch.testing.assert_close(
        flowed._history.seg.count, plain._history.seg.count, rtol=0.02, atol=0
    )


def test_flow_warp_follows_camera_motion(make_model):
    temporal = TemporalMC(make_model(), flow=True, flow_scale=1.0, change_threshold=None)
    frame = _texture(48, 64, seed=4)[..., 0]
    prev, cur = frame[:, 3:-3], frame[:, :-6]  # the camera pans: content moves 3 px right
    history = torch.from_numpy(prev.astype(np.float32))[None, None]
    grid, gate = temporal._motion(prev, cur, cur.shape, torch.device("cpu"))
    # cur(x) = prev(x - 3): the first 3 columns come from outside the previous frame
    assert bool((gate[..., 8:-8, :2] == 0).all()) and bool((gate[..., 8:-8, 8:] == 1).all())
    warped = torch.nn.functional.grid_sample(history, grid, align_corners=True)[0, 0].numpy()
    interior = (slice(8, -8), slice(10, -8))
    aligned = np.abs(warped - cur)[interior].mean()
    unaligned = np.abs(prev.astype(np.float32) - cur)[interior].mean()
    assert aligned < 0.25 * unaligned


def test_scene_change_drops_history(make_model):
    model = make_model(task="depth")
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    dark, bright = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    temporal = TemporalMC(model, fresh_samples=2, decay=0.9, change_threshold=30)
    temporal(x, dark)
    changed = temporal(x, bright)  # every pixel changed: only the 2 fresh samples count
    _close(changed, MCSampler(model, samples=2)(x, first_sample=2))
    still = temporal(x, bright)  # unchanged frame: history kept
    assert not torch.allclose(
        still["depth"], MCSampler(model, samples=2)(x, first_sample=4)["depth"]
    )
    temporal.reset()
    _close(temporal(x, bright), MCSampler(model, samples=2)(x), atol=1e-6)
    # a new input size starts over by itself
    small = x[..., :6, :6]
    _close(temporal(small), MCSampler(model, samples=2)(small), atol=1e-6)


def test_bad_arguments(make_model):
    model = make_model()
    with pytest.raises(ConfigError, match="decay"):
        TemporalMC(model, decay=1.0)
    with pytest.raises(SeguncertError, match="one frame"):
        TemporalMC(model)(torch.zeros(2, 3, 4, 4))
    with pytest.raises(SeguncertError, match="frame_rgb"):
        TemporalMC(model, flow=True)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(SeguncertError, match="RGB"):
        TemporalMC(model)(torch.zeros(1, 3, 4, 4), np.zeros((4, 4), np.uint8))
