"""The video pass reuses the calibration pass's results for the same frames."""

import numpy as np

from seguncert.inference.video import predict_with_cache


class Counting:
    """A predictor that records the frames it is given and returns their mean value."""

    def __init__(self):
        self.calls = []

    def __call__(self, frames):
        self.calls.append(len(frames))
        return [{"m": np.full((2, 2), float(f.mean()))} for f in frames]


def frame(v):
    return np.full((4, 4, 3), v, np.uint8)


def test_cached_frames_are_reused_in_order_and_others_batched():
    predict = Counting()
    cached = {1: (frame(10), {"m": np.zeros((2, 2))}), 3: (frame(30), {"m": np.ones((2, 2))})}
    pending = [(0, frame(0)), (1, frame(10)), (2, frame(20)), (3, frame(30))]
    out = predict_with_cache(predict, pending, cached)
    assert predict.calls == [2]  # frames 0 and 2, as one batch
    assert [float(r["m"][0, 0]) for r in out] == [0.0, 0.0, 20.0, 1.0]
    assert cached == {}  # each cached result is used once


def test_a_cached_frame_with_other_pixels_is_recomputed():
    predict = Counting()
    cached = {0: (frame(5), {"m": np.zeros((2, 2))})}
    out = predict_with_cache(predict, [(0, frame(6))], cached)
    assert predict.calls == [1] and float(out[0]["m"][0, 0]) == 6.0


def test_all_cached_calls_nothing():
    predict = Counting()
    cached = {0: (frame(1), {"m": np.zeros((2, 2))})}
    assert len(predict_with_cache(predict, [(0, frame(1))], cached)) == 1
    assert predict.calls == []
