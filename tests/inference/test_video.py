"""The video pass reuses the calibration pass's results for the same frames."""

import numpy as np
import pytest

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


class FakeRender:
    """Draws the frame as it is; raises on frame ``fail``."""

    kind, class_names = "segmentation", ["a", "b"]

    def __init__(self, fail=None):
        self.fail, self.threads = fail, set()
        self.scales = type("S", (), {"threshold": 0.5})()

    def __call__(self, rgb, maps, pred):
        import threading

        self.threads.add(threading.current_thread().name)
        if int(rgb[0, 0, 0]) == self.fail:
            raise ValueError(f"cannot draw frame {self.fail}")
        return rgb


def sink_frames(tmp_path, render, n=5):
    from seguncert.inference.video import FrameSink, OutputPlan

    plan = OutputPlan(tmp_path / "v.mp4", tmp_path / "v.csv", tmp_path / "v.png")
    sink = FrameSink(render, plan, 10.0, [0, 4], depth=2)
    res = {k: np.ones((4, 4)) for k in ("pred", "aleatoric", "epistemic", "entropy")}
    try:
        for i in range(n):
            sink.put(i, frame(i), res)
    except BaseException:
        sink.abort()
        raise
    return sink.close()


def test_the_sink_draws_in_its_own_thread_in_order(tmp_path):
    render = FakeRender()
    rows, sheet = sink_frames(tmp_path, render)
    assert render.threads == {"FrameSink"}
    assert [r[0] for r in rows] == list(range(5)) and [i for i, _ in sheet] == [0, 4]
    assert (tmp_path / "v.mp4").is_file()


@pytest.mark.parametrize("fail, n", [(2, 40), (4, 5)])  # while frames are queued; the last
def test_an_error_while_drawing_reaches_the_caller_and_leaves_no_video(tmp_path, fail, n):
    with pytest.raises(ValueError, match=f"cannot draw frame {fail}"):
        sink_frames(tmp_path, FakeRender(fail=fail), n=n)
    assert list(tmp_path.iterdir()) == []
