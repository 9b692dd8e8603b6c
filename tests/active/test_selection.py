"""Acquisition scores against a direct numpy computation, the diversity rules of the selection,
and the resumable score log."""

import json

import numpy as np
import pytest
import torch

from seguncert.active.acquisition import (
    FrameScore,
    cosine,
    frame_scores,
    normalised_class_weights,
    random_score,
    thumbnail,
)
from seguncert.active.selection import ScoreLog, rank, select
from seguncert.errors import DataError, SeguncertError


def direct_maps(probs: np.ndarray) -> dict:
    """probs (T, C, H, W) -> the sampler's maps by the textbook formulas, in float64."""
    mean = probs.mean(0)
    total = -(mean * np.log(mean)).sum(0)
    expected = -(probs * np.log(probs)).sum(1).mean(0)
    return {"epistemic": total - expected, "entropy": total, "pred": mean.argmax(0)}


def random_probs(rng, t=5, c=4, h=6, w=7) -> np.ndarray:
    z = rng.normal(size=(t, c, h, w)) * 2
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_frame_scores_match_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    maps = direct_maps(random_probs(rng))
    mi, pred = maps["epistemic"], maps["pred"]
    raw = np.array([1.0, 4.0, 0.5, 2.5])
    w = normalised_class_weights(raw, 4)
    assert float(w.mean()) == pytest.approx(1.0)
    s = frame_scores(maps, w, seed=3, index=7, source="clip")
    assert s["bald"] == pytest.approx(mi.mean(), rel=1e-12)
    assert s["entropy"] == pytest.approx(maps["entropy"].mean(), rel=1e-12)
    wn = raw / raw.mean()
    expected_w = np.mean([[wn[pred[i, j]] * mi[i, j] for j in range(7)] for i in range(6)])
    assert s["weighted_bald"] == pytest.approx(expected_w, rel=1e-12)
    for c in range(4):
        sel = pred == c
        if sel.any():
            assert s["class_mi"][c] == pytest.approx(mi[sel].mean(), rel=1e-12)
        else:
            assert s["class_mi"][c] is None
    assert s["random"] == random_score(3, 7, "clip")
    assert frame_scores(maps, num_classes=4)["weighted_bald"] == pytest.approx(s["bald"])


def test_class_mi_is_none_for_classes_never_predicted():
    maps = {"epistemic": np.full((2, 3), 0.2), "entropy": np.ones((2, 3)),
            "pred": np.array([[0, 0, 2], [2, 2, 0]], float)}  # fmt: skip
    s = frame_scores(maps, num_classes=3)
    assert s["class_mi"] == [pytest.approx(0.2), None, pytest.approx(0.2)]
    rare = normalised_class_weights([1.0, 1.0, 4.0], 3)  # class 2 rare: 4 / 2 = 2x the mean
    assert frame_scores(maps, rare)["weighted_bald"] == pytest.approx(0.2 * (3 * 0.5 + 3 * 2) / 6)


def test_frame_scores_of_sampler_maps_equal_the_mean_mi_of_its_samples():
    """MCSampler's epistemic map, scored, equals the MI computed from its own samples."""
    from seguncert.config import ModelConfig
    from seguncert.models.build import build_model
    from seguncert.uncertainty.sampler import MCSampler

    torch.manual_seed(0)
    cfg = ModelConfig(arch="unet", encoder="resnet18", num_classes=3,
                      decoder_channels=[16, 8, 8, 8, 8], dropout="decoder")  # fmt: skip
    model = build_model(cfg).eval()
    out = MCSampler(model, samples=4, seed=1, return_samples=True)(torch.randn(1, 3, 32, 32))
    direct = direct_maps(out["samples"][:, 0].double().numpy())
    maps = {k: out[k][0] for k in ("epistemic", "entropy", "pred")}
    s = frame_scores(maps, num_classes=3)
    assert s["bald"] > 0
    assert s["bald"] == pytest.approx(direct["epistemic"].mean(), rel=1e-4, abs=1e-7)
    assert s["entropy"] == pytest.approx(direct["entropy"].mean(), rel=1e-5)


def test_bad_maps_and_weights_are_one_line_errors():
    maps = {"epistemic": np.zeros((2, 2)), "entropy": np.zeros((2, 2)), "pred": np.zeros((2, 3))}
    with pytest.raises(SeguncertError, match="one frame"):
        frame_scores(maps, num_classes=2)
    maps["pred"] = np.full((2, 2), 5.0)
    with pytest.raises(SeguncertError, match="outside 0..1"):
        frame_scores(maps, num_classes=2)
    with pytest.raises(SeguncertError, match="3 positive"):
        normalised_class_weights([1.0, -1.0, 2.0], 3)
    assert normalised_class_weights(None, 3) is None


def test_random_score_is_reproducible_and_uniform():
    a = [random_score(0, i, "v") for i in range(2000)]
    assert a == [random_score(0, i, "v") for i in range(2000)]
    assert a != [random_score(1, i, "v") for i in range(2000)]
    assert random_score(0, 5, "v") != random_score(0, 5, "w")
    assert 0 <= min(a) and max(a) < 1 and abs(np.mean(a) - 0.5) < 0.03


def test_thumbnail_is_zero_mean_unit_norm_and_flat_frames_are_zero():
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    t = thumbnail(rgb)
    assert (
        t.shape == (192,) and abs(t.mean()) < 1e-3 and np.linalg.norm(t) == pytest.approx(1, 1e-3)
    )
    assert cosine(t, thumbnail(rgb)) == pytest.approx(1.0)
    flat = thumbnail(np.full((60, 80, 3), 90, np.uint8))
    assert not flat.any()
    assert cosine(flat, flat) == 1.0 and cosine(flat, t) == 0.0


def rec(index, score, source="a", thumb=None):
    if thumb is None:  # distinct, mutually orthogonal-ish thumbnails: similarity never binds
        thumb = np.zeros(192)
        thumb[(index * 7 + 50 * ord(source[0])) % 192] = 1.0
    scores = {"bald": score, "entropy": score, "weighted_bald": score, "random": 0.5}
    return FrameScore(source, index, None, None, scores, [score], thumb)


def picked(sel):
    return [(r.source, r.index) for r in sel.picks]


def test_no_two_picks_of_one_source_within_the_gap():
    scores = [rec(i, s) for i, s in enumerate([0.9, 1.0, 0.95, 0.2, 0.8, 0.85, 0.1, 0.3])]
    sel = select(scores, 2, min_gap_frames=3, max_similarity=1.0)
    # 1 (1.0) first; 2 and 0 lie within 3 frames of it; 5 (0.85) is 4 away
    assert picked(sel) == [("a", 1), ("a", 5)]
    assert sel.skipped_gap == 2 and sel.message is None
    assert select(scores, 3, 3, 1.0).exhausted  # 4, 7, 3, 6 all lie within 3 of a pick
    # per-source gaps: source b has no gap rule and is not blocked by a's picks
    more = scores + [rec(1, 0.99, "b"), rec(2, 0.98, "b")]
    sel = select(more, 4, min_gap_frames={"a": 3, "b": 1}, max_similarity=1.0)
    assert picked(sel) == [("a", 1), ("b", 1), ("b", 2), ("a", 5)]
    assert picked(select(scores, 8, 0, 1.0)) == [("a", i) for i in (1, 2, 0, 5, 4, 7, 3, 6)]


def test_similar_frames_are_skipped_unless_the_limit_is_one():
    base = np.random.default_rng(1).normal(size=192)
    base /= np.linalg.norm(base)
    near = base + 0.01 * np.random.default_rng(2).normal(size=192)
    other = np.random.default_rng(3).normal(size=192)
    scores = [rec(0, 1.0, thumb=base), rec(50, 0.9, thumb=near), rec(100, 0.8, thumb=other)]
    sel = select(scores, 2, min_gap_frames=1, max_similarity=0.95)
    assert picked(sel) == [("a", 0), ("a", 100)] and sel.skipped_similar == 1
    assert picked(select(scores, 2, 1, max_similarity=1.0)) == [("a", 0), ("a", 50)]


def test_ties_are_broken_by_index_then_source_whatever_the_input_order():
    scores = [rec(i, 0.5, s) for i in (4, 2, 9) for s in ("b", "a")] + [rec(3, float("nan"))]
    expect = [("a", 2), ("b", 2), ("a", 4), ("b", 4), ("a", 9), ("b", 9), ("a", 3)]
    assert [(r.source, r.index) for r in rank(scores, "bald")] == expect
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [scores[i] for i in rng.permutation(len(scores))]
        assert picked(select(shuffled, 7, 1, 1.0)) == expect


def test_a_budget_above_the_eligible_frames_takes_all_and_says_so():
    scores = [rec(i, 1.0 - i / 10) for i in range(6)]
    sel = select(scores, 10, min_gap_frames=2, max_similarity=1.0)
    assert picked(sel) == [("a", 0), ("a", 2), ("a", 4)]
    assert sel.exhausted
    assert "budget 10" in sel.message and "3 eligible" in sel.message
    assert "6 scored" in sel.message and "taking all 3" in sel.message
    with pytest.raises(SeguncertError, match="at least 1"):
        select(scores, 0)
    with pytest.raises(SeguncertError, match="unknown acquisition"):
        select(scores, 1, key="variance")


HEADER = {"checkpoints": [{"weights_sha256": "ab" * 32}], "mc_samples": 8, "seed": 0}


def test_score_log_resumes_after_a_truncated_last_line(tmp_path):
    path = tmp_path / "scores.jsonl"
    recs = [rec(i, 0.1 * i) for i in range(3)]
    with ScoreLog(path, HEADER) as log:
        assert log.resumed == 0
        for r in recs:
            log.append(r)
        log.append(recs[0])  # already there: not written twice
    full = path.read_bytes()
    assert full.count(b"\n") == 4
    path.write_bytes(full[: len(full) - 25])  # killed while writing the third record
    with ScoreLog(path, HEADER) as log:
        assert log.resumed == 2 and log.done("a", 1) and not log.done("a", 2)
        assert path.read_bytes() == full[: full.rindex(b"\n", 0, len(full) - 1) + 1]
        log.append(recs[2])
    assert path.read_bytes() == full  # the same file as a run never stopped
    with ScoreLog(path, HEADER) as log:
        back = log.records[("a", 1)]
    assert back.to_json() == recs[1].to_json()
    assert json.loads(full.split(b"\n")[0])["format"].startswith("seguncert-frame-scores")


def test_score_log_refuses_other_settings_unless_overwrite(tmp_path):
    path = tmp_path / "scores.jsonl"
    with ScoreLog(path, HEADER) as log:
        log.append(rec(0, 0.5))
    before = path.read_bytes()
    other = dict(HEADER, mc_samples=20)
    with pytest.raises(SeguncertError, match="mc_samples=8, not 20.*--overwrite"):
        ScoreLog(path, other)
    assert path.read_bytes() == before
    with ScoreLog(path, other, overwrite=True) as log:
        assert log.resumed == 0
    assert json.loads(path.read_text().splitlines()[0])["mc_samples"] == 20


def test_score_log_damaged_inside_is_refused_and_not_a_log_too(tmp_path):
    path = tmp_path / "scores.jsonl"
    with ScoreLog(path, HEADER) as log:
        log.append(rec(0, 0.5))
        log.append(rec(1, 0.4))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{oops\n" + lines[2])
    with pytest.raises(DataError, match="line 2"):
        ScoreLog(path, HEADER)
    with ScoreLog(path, HEADER, overwrite=True) as log:
        assert log.resumed == 0
    path.write_text("hello\n")
    with pytest.raises(DataError, match="not a frame-score log"):
        ScoreLog(path, HEADER)
