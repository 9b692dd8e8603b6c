"""Progress that reaches the user wherever the output goes.

On a terminal a tqdm bar; when the output is a file, a pipe (``| tee train.log``), a job
scheduler or a notebook, tqdm stays silent, so :class:`Progress` prints a plain line every
``every_s`` seconds instead: ``epoch 3: 120/367 it, 2.3 img/s, loss 0.8123, ETA 1m47s``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

DEFAULT_EVERY_S = 30.0


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``Progress(total, desc)``; ``update(n, images=k, **shown)`` after each step; ``close()``.

    ``images`` counts what the rate is measured in (images for training and evaluation, frames
    for video). ``enabled=False`` (non-zero DDP ranks, ``--no-progress``) shows nothing.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        every_s: float = DEFAULT_EVERY_S,
        stream=None,
        rate_unit: str = "img",
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.rate_unit = total, desc, unit, rate_unit
        self.every_s = float(every_s)
        self.enabled = enabled
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = (
            tqdm(
                total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=self.stream
            )
            if enabled and tty
            else None
        )
        self.done = self.images = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1, images: int = 0, **shown) -> None:
        self.done += n
        self.images += images
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if shown:
                self.bar.set_postfix({k: _short(v) for k, v in shown.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(self.line(now, shown), file=self.stream, flush=True)

    def line(self, now: float, shown: dict) -> str:
        elapsed = max(now - self.start, 1e-9)
        parts = [
            f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        ]
        if self.images:
            parts.append(f"{self.images / elapsed:.1f} {self.rate_unit}/s")
        parts += [f"{k} {_short(v)}" for k, v in shown.items()]
        if self.total and self.done:
            parts.append(f"ETA {format_seconds(elapsed / self.done * (self.total - self.done))}")
        return f"{self.desc}: " + ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
