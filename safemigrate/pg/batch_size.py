"""How many rows the next batch takes, and how long to rest after it.

Two aims. A batch should take about the target time: long enough that the
per-batch overhead (one transaction, one progress update) stays small, short
enough that the row locks it holds and the WAL it writes at once stay small.
And a background copy should work only part of the time (the *duty cycle*:
time in batches / total time), leaving the rest to the application; inside
``migrate`` the duty cycle is 1 (plus ``BATCH_PAUSE_MS``), because a deploy is
waiting for it.

The size follows the measured rate (rows per second of the last batch times
the target), but grows by at most ``GROWTH`` per step, so one fast batch (a
range of already-copied rows, rows in cache) cannot make the next one huge;
it may shrink at once, and halves on a timeout or a lock not granted. GitLab's batch optimizer works
on the same idea (time efficiency, a bounded step per job).
"""

from dataclasses import dataclass

#: Largest factor by which one batch may be bigger than the one before.
GROWTH = 2.0


@dataclass
class BatchSizer:
    size: int
    target_s: float
    min_size: int
    max_size: int
    #: Share of the time spent working (0 < duty_cycle <= 1); 1 means no rest between batches.
    duty_cycle: float = 1.0
    #: A fixed rest after each batch (BATCH_PAUSE_MS), added to the duty cycle's.
    pause_s: float = 0.0
    #: Time spent in batches and resting so far (for the measured duty cycle).
    worked_s: float = 0.0
    rested_s: float = 0.0

    def __post_init__(self):
        self.size = max(self.min_size, min(self.max_size, int(self.size)))

    def observe(self, seconds):
        """Aim the next batch at the target time, growing by at most ``GROWTH``."""
        self.worked_s += seconds
        if seconds <= 0:
            return
        wanted = self.size * self.target_s / seconds
        self.size = int(max(self.min_size, min(self.max_size, self.size * GROWTH, wanted)))

    def shrink(self):
        """After a batch that timed out or hit a lock: half as many rows next time."""
        self.size = max(self.min_size, self.size // 2)

    def rest_after(self, seconds):
        """Seconds to rest after a batch of ``seconds``, keeping the duty cycle."""
        rest = self.pause_s
        if self.duty_cycle < 1.0:
            rest += seconds * (1.0 - self.duty_cycle) / self.duty_cycle
        return rest

    def rested(self, seconds):
        self.rested_s += seconds

    @property
    def measured_duty_cycle(self):
        total = self.worked_s + self.rested_s
        return self.worked_s / total if total else 0.0
