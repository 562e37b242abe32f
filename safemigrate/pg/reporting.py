"""What each step did: duration, lock retries, rows.

Operations record steps into the current ``Report`` (a context variable, so
threads and nested commands do not mix their records). Commands install a
report that prints as steps finish; the demo reads the same records to build
its summary. Nothing here touches the database.
"""

import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("safemigrate")


@dataclass
class StepRecord:
    operation: str
    step: str
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0
    lock_retries: int = 0
    rows: int = 0
    batches: int = 0
    skipped: bool = False
    detail: str = ""

    def summary(self):
        parts = [f"{self.duration * 1000:.0f} ms"]
        if self.skipped:
            parts.append("already done")
        if self.lock_retries:
            parts.append(f"{self.lock_retries} lock retries")
        if self.rows or self.batches:
            parts.append(f"{self.rows} rows in {self.batches} batches")
        if self.detail:
            parts.append(self.detail)
        return f"{self.operation}: {self.step} ({', '.join(parts)})"


class Report:
    """Collects step records; ``echo`` (if given) is called with each line.

    ``warn`` (if given) receives the execution path's diagnostics: statements
    rewritten, retried or not made safe. Commands send them to stderr, so a
    plain migration's stdout stays exactly Django's.
    """

    def __init__(self, echo=None, verbosity=1, warn=None):
        self.steps = []
        self.echo = echo
        self.warn = warn
        self.verbosity = verbosity
        self.warnings = []
        #: (backfill name, seconds, rows, monotonic time it committed) of every batch, in order.
        self.batches = []

    def warning(self, line):
        """A diagnostic line about how a statement ran; kept, logged, and shown at verbosity >= 1."""
        self.warnings.append(line)
        logger.warning(line)
        target = self.warn or self.echo
        if target and self.verbosity >= 1:
            target(line)

    def add(self, record):
        self.steps.append(record)
        logger.info(record.summary())
        if self.echo and self.verbosity >= 1:
            self.echo("    " + record.summary())

    def batch(self, name, seconds, rows):
        """One backfill batch committed: ``manage.py rehearse`` reads p50/p95 batch times from these."""
        self.batches.append((name, seconds, rows, time.monotonic()))

    def progress(self, line):
        """A transient progress line (backfills); shown at verbosity >= 1."""
        logger.debug(line)
        if self.echo and self.verbosity >= 1:
            self.echo("      " + line)

    @property
    def lock_retries(self):
        return sum(step.lock_retries for step in self.steps)

    @property
    def rows(self):
        return sum(step.rows for step in self.steps)


_current = contextvars.ContextVar("safemigrate_report", default=None)


def current_report():
    report = _current.get()
    if report is None:
        report = Report()
        _current.set(report)
    return report


@contextlib.contextmanager
def collecting(report):
    token = _current.set(report)
    try:
        yield report
    finally:
        _current.reset(token)


@contextlib.contextmanager
def step(operation, name):
    """Time one step and add it to the current report when it ends."""
    record = StepRecord(operation=str(operation), step=name)
    try:
        yield record
    finally:
        record.duration = time.monotonic() - record.started
        current_report().add(record)
