"""Diverse top-k frame selection, and the resumable per-frame score log (``scores.jsonl``).

Selection (:func:`select`) is greedy in the order of :func:`rank` (score descending, ties by
frame index, then source name, so the same scores always give the same ranking). A frame is
skipped when a pick of the same source lies fewer than ``min_gap_frames`` frames away
(|i - j| < K: consecutive video frames are near duplicates and cost a labeller the same work
twice) or when its thumbnail's cosine similarity to any pick's exceeds ``max_similarity`` (the
same view revisited later in a video). K <= 1 and a limit of 1.0 turn the rules off.

Score log: line 1 is the header (``format`` plus what the scores depend on: checkpoints and
their weights' SHA-256, MC samples, seed, size, ...), then one :class:`FrameScore` JSON object
per line, flushed and fsynced as soon as the frame is scored. A run killed at any moment loses
at most the line being written: :class:`ScoreLog` drops a partial last line and carries on after
the frames already there. A log with another header is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, SeguncertError, one_line
from ..io.atomic import atomic_write_text
from .acquisition import ACQUISITIONS, FrameScore

SCORES_FORMAT = "seguncert-frame-scores/1"


@dataclass
class Selection:
    """``picks`` in pick order; ``ranking``: every scored frame, best first; ``message``: set
    when fewer than the budget were eligible (the tool prints it)."""

    picks: list[FrameScore]
    ranking: list[FrameScore]
    message: str | None = None
    skipped_gap: int = 0
    skipped_similar: int = 0
    budget: int = 0
    key: str = "bald"

    @property
    def exhausted(self) -> bool:
        return self.message is not None


def rank(scores: list[FrameScore], key: str) -> list[FrameScore]:
    """Frames by descending ``key`` score; ties by frame index, then source (deterministic)."""
    return sorted(scores, key=lambda r: (-r.score(key), r.index, r.source))


def _most_similar(mat: np.ndarray, norms: np.ndarray, t: np.ndarray) -> float:
    """Largest cosine similarity of thumbnail t (D,) to the rows of mat (P, D) (-1 when P = 0),
    with the flat-thumbnail convention of :func:`~seguncert.active.acquisition.cosine`."""
    if len(mat) == 0:
        return -1.0
    nt = float(np.linalg.norm(t))
    if nt == 0.0:
        return 1.0 if bool((norms == 0).any()) else 0.0
    sims = np.where(norms > 0, mat @ t / (np.maximum(norms, 1e-12) * nt), 0.0)
    return float(np.clip(sims.max(), -1.0, 1.0))


def _gap_of(min_gap_frames: int | Mapping[str, int]):
    """source -> minimum gap K in frames (one K for all, or one per source name)."""
    if isinstance(min_gap_frames, Mapping):
        return lambda source: int(min_gap_frames.get(source, 1))
    return lambda source: int(min_gap_frames)


def select(
    scores: list[FrameScore],
    budget: int,
    min_gap_frames: int | Mapping[str, int] = 15,
    max_similarity: float = 0.95,
    key: str = "bald",
) -> Selection:
    """Greedy diverse top-``budget`` frames under acquisition ``key`` (module docstring);
    ``min_gap_frames`` is one K or a mapping source name -> K.

    A budget above the number of eligible frames takes them all and sets ``message``."""
    if int(budget) < 1:
        raise SeguncertError(f"the budget must be at least 1 frame, got {budget}")
    if key not in ACQUISITIONS:
        raise SeguncertError(f"unknown acquisition {key!r}; expected {', '.join(ACQUISITIONS)}")
    gap_of = _gap_of(min_gap_frames)
    ranking = rank(scores, key)
    cap = min(int(budget), len(ranking))
    dim = len(ranking[0].thumb) if ranking else 0
    mat, norms = np.zeros((cap, dim)), np.zeros(cap)
    picks: list[FrameScore] = []
    taken: dict[str, list[int]] = {}
    gap = similar = 0
    for r in ranking:
        if len(picks) == cap:
            break
        if any(abs(r.index - j) < gap_of(r.source) for j in taken.get(r.source, ())):
            gap += 1
            continue
        if _most_similar(mat[: len(picks)], norms[: len(picks)], r.thumb) > max_similarity:
            similar += 1
            continue
        mat[len(picks)], norms[len(picks)] = r.thumb, np.linalg.norm(r.thumb)
        picks.append(r)
        taken.setdefault(r.source, []).append(r.index)
    message = None
    if len(picks) < budget:
        message = (
            f"budget {budget} is more than the {len(picks)} eligible frame(s) of the "
            f"{len(ranking)} scored ({gap} within the minimum gap of a pick, {similar} "
            f"with similarity > {max_similarity} to one): taking all {len(picks)}"
        )
    return Selection(picks, ranking, message, gap, similar, int(budget), key)


def _normalised(header: dict) -> dict:
    """The header as it reads back from JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps({"format": SCORES_FORMAT, **header}))


def _short(v, n: int = 100) -> str:
    s = one_line(json.dumps(v))
    return s if len(s) <= n else s[: n - 3] + "..."


def _header_difference(path: Path, old: dict, new: dict) -> str | None:
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return (
                f"{path} holds scores made with {k}={_short(old.get(k))}, not {_short(new.get(k))}"
                "; pass --overwrite to score again (or choose another --out)"
            )
    return None


@dataclass
class _Loaded:
    records: list[FrameScore] = field(default_factory=list)
    keep_bytes: int | None = None  # bytes of whole lines to keep; None: start a new log


def read_log(path: str | Path, header: dict, overwrite: bool = False) -> _Loaded:
    """Read an existing log without changing it: its records, and how many bytes are whole
    lines. SeguncertError (one line) for another header, DataError for a damaged line before the
    last, unless ``overwrite`` (then: start anew)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return _Loaded()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")  # the piece after the last newline is b"" or a partial record
    try:
        old = json.loads(lines[0])
        assert isinstance(old, dict) and old.get("format") == SCORES_FORMAT and len(lines) > 1
    except (ValueError, AssertionError):
        if overwrite:
            return _Loaded()
        raise DataError(
            f"{path} is not a frame-score log; pass --overwrite to replace it"
        ) from None
    diff = _header_difference(path, old, _normalised(header))
    if diff:
        if overwrite:
            return _Loaded()
        raise SeguncertError(diff)
    loaded, offset = _Loaded(), len(lines[0]) + 1
    for n, raw in enumerate(lines[1:-1], start=2):
        try:
            loaded.records.append(FrameScore.from_json(json.loads(raw)))
        except (ValueError, KeyError, TypeError):
            if overwrite:
                return _Loaded()
            raise DataError(
                f"{path} line {n} is not a frame score record; delete the file or pass --overwrite"
            ) from None
        offset += len(raw) + 1
    loaded.keep_bytes = offset
    return loaded


class ScoreLog:
    """``scores.jsonl`` opened for appending (module docstring); ``records`` maps
    (source, index) -> :class:`FrameScore` for every frame already scored, in file order."""

    def __init__(self, path: str | Path, header: dict, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.header = _normalised(header)
        loaded = read_log(self.path, header, overwrite)
        if loaded.keep_bytes is None:
            atomic_write_text(self.path, json.dumps(self.header) + "\n")
        else:
            os.truncate(self.path, loaded.keep_bytes)  # a partial last line from a killed run
        self.records = {(r.source, r.index): r for r in loaded.records}
        self.resumed = len(self.records)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def done(self, source: str, index: int) -> bool:
        return (source, int(index)) in self.records

    def append(self, record: FrameScore) -> None:
        """Write one record and make it durable before the next frame (a no-op if present)."""
        key = (record.source, record.index)
        if key in self.records:
            return
        self._file.write(json.dumps(record.to_json()) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[key] = record

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> ScoreLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
