import os

import cv2
import numpy as np
import pytest

from seguncert.errors import DataError
from seguncert.io.video_reader import FrameReader, iter_inputs, natural_key
from seguncert.io.video_writer import AtomicVideoWriter, write_image


def make_video(path, n=5, size=(64, 96), fps=12.0, codec="mp4v"):
    h, w = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((h, w, 3), (30 + 40 * i) % 250, np.uint8))
    vw.release()
    return path


def make_frames(folder, names, size=(20, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        write_image(folder / name, np.full((*size, 3), k * 10, np.uint8))
    return folder


def test_natural_sort():
    names = ["frame10.png", "frame2.png", "frame1.png", "Frame3.png"]
    assert sorted(names, key=natural_key) == [
        "frame1.png",
        "frame2.png",
        "Frame3.png",
        "frame10.png",
    ]


def test_reader_on_generated_video(tmp_path):
    path = make_video(tmp_path / "clip.mp4")
    (src,) = iter_inputs([str(path)])
    assert src.kind == "video" and src.name == "clip"
    reader = FrameReader(src)
    assert reader.fps == pytest.approx(12.0) and reader.frame_count == 5
    frames = list(reader)
    assert [i for i, _ in frames] == list(range(5))
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for _, f in frames)
    assert frames[0][1].mean() < frames[-1][1].mean()  # order preserved
    small = list(FrameReader(src, size=(32, 40)))
    assert len(small) == 5 and small[0][1].shape == (32, 40, 3)
    picked = FrameReader(src).read_frames([0, 4])
    assert [i for i, _ in picked] == [0, 4]
    assert np.abs(picked[1][1].astype(int) - frames[4][1].astype(int)).mean() < 3


def test_reader_stops_its_thread_when_abandoned(tmp_path):
    reader = FrameReader(str(make_video(tmp_path / "c.mp4", n=20)), queue_size=2)
    for i, _ in reader:
        if i == 1:
            break
    reader.close()
    assert reader._thread is None


def test_folder_and_glob_inputs(tmp_path):
    folder = make_frames(tmp_path / "seq", ["f10.png", "f2.png", "f1.png", "notes.txt"][:3])
    (tmp_path / "seq" / "notes.txt").write_text("not a frame")
    (src,) = iter_inputs([str(folder)])
    assert src.kind == "frames" and src.name == "seq"
    assert [os.path.basename(p) for p in src.paths] == ["f1.png", "f2.png", "f10.png"]
    reader = FrameReader(src)
    assert reader.fps == 10.0 and reader.frame_count == 3
    got = list(reader)
    # f1.png was written with value 20, f2.png 10, f10.png 0: natural order, not name order.
    assert [int(f.mean()) for _, f in got] == [20, 10, 0]
    (g,) = iter_inputs([str(tmp_path / "seq" / "f*.png")])
    assert g.paths == src.paths
    (single,) = iter_inputs([str(folder / "f2.png")])
    assert single.kind == "frames" and len(list(FrameReader(single, fps=25))) == 1
    two = iter_inputs([str(folder), str(folder)])
    assert [s.name for s in two] == ["seq", "seq_2"]


def test_bad_inputs_raise_data_errors_naming_the_path(tmp_path):
    with pytest.raises(DataError, match="missing.mp4"):
        iter_inputs([str(tmp_path / "missing.mp4")])
    with pytest.raises(DataError, match="matched no files"):
        iter_inputs([str(tmp_path / "*.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image frames"):
        iter_inputs([str(tmp_path / "empty")])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(DataError, match="junk.mp4"):
        FrameReader(str(junk))
    zero = tmp_path / "zero.avi"
    cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32)).release()
    with pytest.raises(DataError, match="zero.avi"):
        FrameReader(str(zero))
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        FrameReader(str(bad_png))


def test_atomic_writer_success_and_codecs(tmp_path):
    for name, fourcc in (("out.mp4", "mp4v"), ("out.avi", "MJPG")):
        path = tmp_path / name
        with AtomicVideoWriter(path, 10, (33, 47)) as vw:  # odd size: padded to even
            for i in range(4):
                vw.write(np.full((33, 47, 3), i * 50, np.uint8))
            assert not path.exists()  # only the temporary file exists while writing
        data = path.read_bytes()
        assert (data[:4] == b"RIFF") == (name == "out.avi")  # AVI container for .avi
        assert fourcc.encode() in data  # the codec tag is stored in the stream header
        cap = cv2.VideoCapture(str(path))
        assert cap.read()[1].shape == (34, 48, 3)
        n = 1
        while cap.read()[0]:
            n += 1
        assert n == 4
    assert sorted(os.listdir(tmp_path)) == ["out.avi", "out.mp4"]


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with AtomicVideoWriter(path, 10, (32, 32)) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(DataError, match="no frames"):
        with AtomicVideoWriter(path, 10, (32, 32)):
            pass
    assert os.listdir(tmp_path) == []


def test_unwritable_outputs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        AtomicVideoWriter(afile / "x.mp4", 10, (32, 32))
    with pytest.raises(DataError, match="/proc/x.mp4"):
        AtomicVideoWriter("/proc/x.mp4", 10, (32, 32))
    assert not os.path.exists("/proc/x.mp4")
