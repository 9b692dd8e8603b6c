"""Uncertainty-driven selection of frames to label (active learning on video).

:mod:`~seguncert.active.acquisition` scores one frame from its MC sampler maps (BALD, entropy,
class-weighted BALD, random) and keeps a small appearance thumbnail;
:mod:`~seguncert.active.selection` picks a diverse top set of frames and keeps the scores in a
resumable ``scores.jsonl``; :mod:`~seguncert.active.scoring` runs inputs through the sampler
into that log and :mod:`~seguncert.active.report` writes the picks (PNGs, contact sheet, CSV)
for ``tools/select_frames.py``.
"""

from .acquisition import ACQUISITIONS, FrameScore, frame_scores, thumbnail
from .selection import ScoreLog, Selection, select

__all__ = [
    "ACQUISITIONS",
    "FrameScore",
    "ScoreLog",
    "Selection",
    "frame_scores",
    "select",
    "thumbnail",
]
