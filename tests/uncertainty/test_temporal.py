"""TemporalMC: decay 0 == fresh MC, convergence on a static scene, flow warping and gating, and
never inventing uncertainty: at 1, 5, 15 and 30 frames/s of a real clip and across a hard cut
the fused mean epistemic per frame stays within 1.5x of per-frame T = 20 sampling's."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seguncert.data.camvid import read_rgb, resize_image
from seguncert.data.synthetic import render_sequence
from seguncert.errors import ConfigError, SeguncertError
from seguncert.inference.frames import frames_to_batch
from seguncert.models.base import MCDropout, StagedModel
from seguncert.uncertainty.maps import SegmentationAccumulator
from seguncert.uncertainty.sampler import MCSampler, MCStats
from seguncert.uncertainty.temporal import TemporalMC
from seguncert.uncertainty.temporal_gates import (
    _fb_consistent,
    hist_distance,
    prediction_gate,
    warp,
)


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
    temporal = TemporalMC(model, fresh_samples=2, decay=0.9, change_threshold=30, reset_samples=2)
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


def test_first_frame_and_cuts_run_reset_samples(make_model):
    model = make_model()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    dark, bright = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    temporal = TemporalMC(model, fresh_samples=2, decay=0.75)
    assert temporal.reset_samples == 12
    temporal(x, dark)  # no history: 12 samples, not 2 (whose MI reads about half as high)
    assert temporal._history.seg.count == 12
    temporal(x, dark)  # a repeated frame keeps its whole history
    assert not temporal.last_cut and temporal.last_kept == 1.0
    torch.testing.assert_close(temporal._history.seg.count, torch.full((1, 1, 8, 8), 11.0))
    temporal(x, bright)  # a cut: history dropped, the frame starts over with 12 samples
    assert temporal.last_cut and temporal._history.seg.count == 12
    with pytest.raises(ConfigError, match="reset_samples"):
        TemporalMC(model, fresh_samples=4, reset_samples=2)
    with pytest.raises(ConfigError, match="consistency"):
        TemporalMC(model, consistency=0)


def _accumulator(probs: torch.Tensor) -> MCStats:
    """MCStats of samples probs (k, 1, C, H, W)."""
    stats = MCStats()
    stats.seg = SegmentationAccumulator()
    stats.seg.update(probs)
    return stats


def test_prediction_gate_drops_history_that_disagrees():
    h, w, q = 6, 8, 2  # columns: [0, q) history softer, [q, w/2) same, [w/2, w) other class
    confident = torch.tensor([0.96, 0.02, 0.02])[None, None, :, None, None]
    soft = torch.tensor([0.6, 0.3, 0.1])[None, None, :, None, None]
    hist = confident.expand(6, 1, 3, h, w).clone()
    hist[..., w // 2 :] = confident[:, :, [2, 1, 0]]  # class 2 instead of 0
    hist[:3, ..., :q] = soft
    weight = torch.full((1, 1, h, w), 0.75)
    fresh = confident.expand(2, 1, 3, h, w).clone()
    gate, level, own = prediction_gate(
        _accumulator(fresh), _accumulator(hist), weight, 0.5, 3, 0.25
    )
    assert bool((gate[..., w // 2 :] == 0).all())  # another class: the history is dropped
    assert bool((gate[..., q : w // 2] == 1).all())
    # Spread the fresh samples do not show is not licensed by the history's own spread...
    assert bool((gate[..., :q] == 0).all()) and float(own[..., :q].min()) > 0.05
    # ...but where the fresh samples disagree too, the history's spread is kept.
    fresh[1, ..., :q] = soft
    gate, level, _ = prediction_gate(_accumulator(fresh), _accumulator(hist), weight, 0.5, 3, 0.25)
    assert bool((gate[..., :q] == 1).all()) and bool((gate[..., w // 2 :] == 0).all())
    assert level.shape == (1, 1, h, w) and float(level[..., :q].min()) > 0


def test_cut_detector_flow_check_and_unmixed_warp():
    grey = _texture(32, 40)[..., 0]
    assert hist_distance(grey, grey) == 0.0
    assert hist_distance(np.zeros_like(grey), np.full_like(grey, 255)) > 0.99
    assert hist_distance(grey, np.roll(grey, 3, axis=1)) < 0.05  # same content, moved
    ys, xs = np.mgrid[0:8, 0:8].astype(np.float32)
    back = np.full((8, 8, 2), 3.0, np.float32)
    assert _fb_consistent(back, -back, xs, ys).all()  # there and back again
    assert not _fb_consistent(back, back, xs, ys).any()  # the forward flow disagrees
    # Warping moves statistics, never blends neighbours into a mixture (that reads as MI).
    labels = (torch.arange(8.0) >= 4).float().expand(1, 1, 8, 8)
    gy, gx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0) + 0.4, indexing="ij")
    grid = torch.stack([gx / 3.5 - 1, gy / 3.5 - 1], -1)[None]
    warped = warp(labels, grid)
    assert set(warped.unique().tolist()) == {0.0, 1.0}


class _Smooth(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, state: dict) -> dict:
        x = F.avg_pool2d(state["x"], 5, 1, 2, count_include_pad=False)
        return {**state, "x": torch.relu(self.b(torch.relu(self.a(x))))}


class _Classifier(nn.Module):
    def __init__(self, width: int, classes: int, p: float, scale: float) -> None:
        super().__init__()
        self.drop, self.conv, self.scale = MCDropout(p), nn.Conv2d(width, classes, 1), scale

    def forward(self, state: dict) -> dict:
        return {**state, "logits": self.conv(self.drop(state["x"])) * self.scale}


class _StreetNet(StagedModel):
    """A stand-in for a trained segmenter (tests have no checkpoint): blurred colour features
    (the deterministic prefix) and a confident classifier behind a light MC dropout, so the
    classes follow image regions and the epistemic map is small and concentrated on class
    boundaries -- the regime where fusing mismatched views multiplies it."""

    def __init__(self, width: int = 32, classes: int = 11, p: float = 0.05, scale: float = 30.0):
        super().__init__()
        self.stages = nn.ModuleList([_Smooth(width), _Classifier(width, classes, p, scale)])
        self.spec = {"task": "segmentation", "depth_dist": None}


def _street_net() -> _StreetNet:
    torch.manual_seed(0)
    return _StreetNet().eval()


META = {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}
TOLERANCE = 1.5
# Every gate off and K samples on a first frame: the fusion before this issue was fixed.
UNGATED = dict(
    change_threshold=None, consistency=None, cut_share=None, cut_distance=None, reset_samples=2
)


def _reference(model, frames: list[np.ndarray]) -> np.ndarray:
    """Per frame: mean epistemic of per-frame T = 20 sampling (as tools/infer.py runs it)."""
    reference = MCSampler(model, samples=20)
    xs = [frames_to_batch([f], META, "cpu") for f in frames]
    return np.array([float(reference(x)["epistemic"].mean()) for x in xs])


def _ratios(model, frames, temporal: TemporalMC, reference=None) -> np.ndarray:
    """Per frame: mean epistemic of ``temporal`` / that of per-frame T = 20 sampling."""
    reference = _reference(model, frames) if reference is None else reference
    fused = [float(temporal(frames_to_batch([f], META, "cpu"), f)["epistemic"].mean())
             for f in frames]  # fmt: skip
    return np.array(fused) / reference


def _within(ratios: np.ndarray) -> bool:
    return bool((ratios <= TOLERANCE).all() and (ratios >= 1 / TOLERANCE).all())


@functools.lru_cache(maxsize=1)
def _synthetic_cut() -> tuple[list, np.ndarray]:
    """(frames, per-frame T = 20 mean epistemic): 5 frames of one synthetic street at 15
    frames/s, then 4 of another (a hard cut at frame 5)."""
    first = [s["image"] for s in render_sequence(5, size=(96, 128), seed=1, fps=15)]
    second = [s["image"] for s in render_sequence(4, size=(96, 128), seed=2, fps=15)]
    return first + second, _reference(_street_net(), first + second)


@pytest.mark.parametrize("flow", [False, True])
def test_hard_cut_does_not_invent_uncertainty(flow):
    model, (frames, reference) = _street_net(), _synthetic_cut()
    ratios = _ratios(model, frames, TemporalMC(model, 2, flow=flow), reference)
    assert _within(ratios), ratios.round(2)
    ungated = _ratios(model, frames, TemporalMC(model, 2, flow=flow, **UNGATED), reference)
    assert ungated[5:].max() > 2 * TOLERANCE, ungated.round(2)  # what the gates prevent


def _rates(frames: list[np.ndarray]) -> dict[int, list[np.ndarray]]:
    """The clip at 1, 5, 15 and 30 frames/s (every 15th, 3rd, 1st frame; midway blends)."""
    blends = []
    for a, b in zip(frames[:7], frames[1:8]):
        blends += [a, ((a.astype(np.uint16) + b) // 2).astype(np.uint8)]
    return {1: frames[::15], 5: frames[::3][:10], 15: frames[:10], 30: blends}


@functools.lru_cache(maxsize=1)
def _camvid_rates(val: Path, size=(96, 128)) -> dict[int, tuple[list, np.ndarray]]:
    """{rate: (frames, per-frame T = 20 mean epistemic)} of CamVid val sorted by name: the
    0016E5 sequence at 15 frames/s."""
    frames = [resize_image(read_rgb(f), size) for f in sorted(val.glob("*.png"))]
    if len(frames) < 91:
        pytest.skip(f"{val} has {len(frames)} frames; the test needs the 101 of 0016E5")
    model = _street_net()
    return {rate: (clip, _reference(model, clip)) for rate, clip in _rates(frames).items()}


@pytest.mark.parametrize("flow", [False, True])
def test_real_clip_at_every_rate_stays_near_per_frame_sampling(camvid_root, flow):
    model, rates = _street_net(), _camvid_rates(camvid_root / "val")
    for rate, (clip, reference) in rates.items():
        ratios = _ratios(model, clip, TemporalMC(model, 2, flow=flow), reference)
        assert _within(ratios), (rate, ratios.round(2))
    if not flow:  # the ungated fusion, at 1 frame/s, inflates it: the test can fail
        clip, reference = rates[1]
        ungated = _ratios(model, clip, TemporalMC(model, 2, **UNGATED), reference)
        assert ungated.max() > 2 * TOLERANCE, ungated.round(2)
