"""Live traffic and lock blockers for zero-downtime tests.

``Traffic`` runs a workload (plain ORM calls written against one version of
a model) in background threads, timing every call and recording every
error. ``Blocker`` holds a transaction with ACCESS SHARE on a table, over and
over, the way a long report query does in production: any ACCESS EXCLUSIVE
request that queues behind it blocks all later traffic on the table.

Both own their database connections (Django connections are per thread) and
close them when stopped, so the test database can be dropped afterwards.
"""

import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field

from django.db import connection, connections


@dataclass
class TrafficResult:
    name: str
    calls: int = 0
    errors: list = field(default_factory=list)
    latencies: list = field(default_factory=list)

    @property
    def worst(self):
        return max(self.latencies, default=0.0)

    def percentile(self, pct):
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))
        return ordered[index]

    @property
    def median(self):
        return statistics.median(self.latencies) if self.latencies else 0.0

    def slow(self, bound):
        return [lat for lat in self.latencies if lat > bound]

    def __str__(self):
        return (
            f"{self.name}: {self.calls} calls, {len(self.errors)} errors, "
            f"p50 {self.median * 1000:.1f} ms, p99 {self.percentile(99) * 1000:.1f} ms, "
            f"worst {self.worst * 1000:.1f} ms"
        )


class Traffic:
    """Call ``workload(thread_index, iteration)`` in a loop from ``threads`` threads."""

    def __init__(self, name, workload, threads=2, pause=0.002):
        self.name = name
        self.workload = workload
        self.threads = threads
        self.pause = pause
        self.result = TrafficResult(name)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = []

    def _run(self, index):
        iteration = 0
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.workload(index, iteration)
                    error = None
                except Exception as exc:  # recorded, the test asserts on it
                    error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
                    # A failed statement may leave the connection unusable.
                    connection.close()
                elapsed = time.monotonic() - started
                with self._lock:
                    self.result.calls += 1
                    self.result.latencies.append(elapsed)
                    if error:
                        self.result.errors.append(error)
                iteration += 1
                if self.pause:
                    time.sleep(self.pause)
        finally:
            connections.close_all()

    def start(self):
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), name=f"{self.name}-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self):
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Blocker:
    """Repeatedly hold ACCESS SHARE on ``table`` for ``hold`` seconds.

    Between holds it releases for ``gap`` seconds, as a stream of long
    reports would. ``holds`` counts completed holds, so a test can check that
    the blocker really overlapped the migration.
    """

    def __init__(self, table, hold=1.2, gap=0.05):
        self.table = table
        self.hold = hold
        self.gap = gap
        self.holds = 0
        self.errors = []
        self._stop = threading.Event()
        self._holding = threading.Event()
        self._thread = None

    def _run(self):
        try:
            while not self._stop.is_set():
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("BEGIN")
                        cursor.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{self.table}" LIMIT 1) s')
                        self._holding.set()
                        self._stop.wait(self.hold)
                        cursor.execute("COMMIT")
                    self.holds += 1
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
                self._stop.wait(self.gap)
        finally:
            connections.close_all()

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"blocker-{self.table}", daemon=True)
        self._thread.start()
        self._holding.wait(10)
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def assert_scenario_kept_both_versions_working(result, bound):
    """What every deploy scenario (``testproject.scenario``) must show, whatever it changes.

    No step failed and no request erred; the blocker overlapped the deploy; every traffic
    phase ran and no request waited longer than ``bound`` seconds; every row either code
    version wrote is there with its values; the final catalog checks pass; and
    ``makemigrations --check`` finds nothing left to do.
    """
    assert result.failures == [], result.failures[0][-2000:]
    assert result.errors == [], result.errors[:2]
    assert result.blocker_holds >= 2, "the blocker must overlap the deploy"
    for summary in result.traffic:
        assert summary.calls > 50, summary.line()
        assert summary.slow(bound) == [], summary.line()
    assert result.checked_rows > 100
    assert result.missing == [] and result.mismatches == [], (result.missing[:5], result.mismatches[:5])
    assert result.failed_checks == []
    assert result.check_clean, "makemigrations --check must find nothing left to do"
