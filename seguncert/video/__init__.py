"""Video I/O for the inference tools: :mod:`.reader` (inputs, threaded decoding) and
:mod:`.writer` (atomic video / image / byte outputs)."""

from .reader import DEFAULT_FPS, IMAGE_EXTS, FrameReader, Source, is_image, iter_inputs, natural_key
from .writer import AtomicVideoWriter, atomic_write_bytes, check_writable, write_image

__all__ = [
    "DEFAULT_FPS",
    "IMAGE_EXTS",
    "AtomicVideoWriter",
    "FrameReader",
    "Source",
    "atomic_write_bytes",
    "check_writable",
    "is_image",
    "iter_inputs",
    "natural_key",
    "write_image",
]
