"""The wall-clock budget of a training run (``train.max_minutes``), in one object.

A budgeted run must end on time *and* still decay its learning rate to the end. So:

- inside an epoch, training stops before an iteration after which one validation would no
  longer fit (:meth:`TimeBudget.stop_now`);
- after every epoch the schedule's horizon is set to the iterations predicted to fit in what is
  left, less one validation per ``val_every`` epochs (:meth:`TimeBudget.fit_horizon`), so the
  decay follows the machine's actual speed in both directions;
- after an epoch, the run stops unless one more iteration and two validations (this epoch's and
  the final one) still fit (:meth:`TimeBudget.stop_after_epoch`).

A validation's cost (validation + checkpointing) is measured once one has run; before that it
is estimated as a third of a training iteration per validation image. The budget counts from
the start of ``fit`` (imports excluded) and applies per invocation: a resumed run gets a new one.
"""

from __future__ import annotations

import time


class TimeBudget:
    def __init__(
        self,
        minutes: float | None,
        val_images: int,
        batch_size: int,
        start: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self.seconds = None if not minutes else float(minutes) * 60.0
        self.val_images, self.batch_size = int(val_images), max(1, int(batch_size))
        self.clock = clock
        self.start = clock() if start is None else start
        self.validation_s: float | None = None  # measured cost of one validation + save

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    def left(self) -> float:
        return self.start + self.seconds - self.clock() if self.enabled else float("inf")

    def validation_estimate(self, per_iter: float) -> float:
        """Seconds of one validation: measured once known, else estimated from ``per_iter``."""
        if self.validation_s is not None:
            return self.validation_s
        return self.val_images * per_iter / (3 * self.batch_size)

    def record_validation(self, seconds: float) -> None:
        self.validation_s = max(self.validation_s or 0.0, float(seconds))

    def stop_now(self, per_iter: float) -> bool:
        """Mid-epoch: would one more iteration leave no time for a validation?"""
        return self.enabled and per_iter + self.validation_estimate(per_iter) > self.left()

    def stop_after_epoch(self, per_iter: float) -> bool:
        """Between epochs: stop unless one iteration and two validations still fit."""
        return self.enabled and per_iter + 2 * self.validation_estimate(per_iter) > self.left()

    def fit_horizon(
        self, horizon, done_iters: int, per_iter: float, epoch_iters: int, val_every: int
    ) -> int:
        """Set the schedule's :class:`~seguncert.train.optim.Horizon` to the iterations that fit
        in the time left (never past the configured total); returns the new total."""
        val_s = self.validation_estimate(per_iter)
        left = self.left()
        n_vals = 1 + left / max(1e-9, per_iter * epoch_iters * max(1, val_every) + val_s)
        return horizon.fit_budget(done_iters, left - n_vals * val_s, per_iter)
