"""Health signals a background copy reads before each batch, each with a value and a limit.

A copy that keeps writing while the database is already struggling makes it
worse: replicas fall further behind, the WAL archive falls behind, vacuum
cannot clean the rows the copy updates, queued lock requests wait longer,
connections run out. Before each batch the runner reads these signals; when
one says stop, no batch starts and the migration goes ``on_hold`` for
``BACKGROUND_HOLD_S`` with that reading as the reason (GitLab's batched
migrations put a migration on hold the same way). Each reading names the
signal, its value and its limit, in the log, in ``backfills status`` and on
the admin page.

===================  ==================================================  =====================================
signal               value                                               stops when (setting)
===================  ==================================================  =====================================
``replica_lag``      ms since the oldest WAL this copy wrote that a       > ``MAX_REPLICA_LAG_MS``
                     streaming replica has not replayed (``LagClock``)
``wal_rate``         WAL bytes/s the whole server wrote over the last     > ``BACKGROUND_MAX_WAL_BYTES_PER_S``
                     few seconds (``pg_current_wal_lsn``)
``vacuum``           VACUUMs (auto or manual) running on the table        > 0 (``BACKGROUND_PAUSE_DURING_VACUUM``)
                     (``pg_stat_progress_vacuum``)
``transaction_age``  seconds the oldest open transaction in this          > ``BACKGROUND_MAX_TRANSACTION_AGE_S``
                     database has been open (it holds vacuum back)
``lock_waiters``     sessions queued for a table lock on the table        > ``BACKGROUND_MAX_LOCK_WAITERS``
``connections``      client connections / connections available           > ``BACKGROUND_MAX_CONNECTION_USE``
``custom``           what ``BACKGROUND_HEALTH_CHECK`` returns              when it returns a reason
===================  ==================================================  =====================================

A limit of ``None`` turns its signal off. The queries read statistics views
only (no lock on anything); a role without ``pg_read_all_stats`` sees less
of other roles' sessions, as for the replica check.
"""

import time
from collections import deque
from dataclasses import asdict, dataclass

from django.utils.module_loading import import_string

from ..conf import conf
from .replica_lag import LagClock, describe_replicas, lsn_to_int, replica_positions

#: Seconds of WAL positions the rate is measured over.
WAL_WINDOW_S = 5.0


@dataclass
class Reading:
    signal: str
    value: "float | None"
    limit: "float | None"
    unit: str
    stop: bool
    detail: str = ""

    def describe(self):
        value = _format(self.value, self.unit)
        if self.stop:
            text = f"{self.signal} {value} > {_format(self.limit, self.unit)}"
        else:
            text = f"{self.signal} {value} (limit {_format(self.limit, self.unit)})"
        return f"{text}: {self.detail}" if self.detail else text

    def as_dict(self):
        return asdict(self)


def _format(value, unit):
    if value is None:
        return "-"
    if unit == "bytes/s":
        return f"{value / 1048576:.1f} MB/s"
    if unit == "ratio":
        return f"{value:.0%}"
    if unit == "ms":
        return f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:g}{(' ' + unit) if unit else ''}"


class Health:
    """The signals of one copy on ``table``; ``check()`` before each batch."""

    def __init__(self, connection, table, *, lag_since=None, clock=time.monotonic):
        self.connection, self.table, self.clock = connection, table, clock
        self.lag_clock = LagClock(connection, clock=clock, since=lag_since) \
            if conf.max_replica_lag_ms is not None else None
        self.wal_samples = deque()

    def mark(self, lsn_text):
        """A batch committed; its WAL ends at ``lsn_text``."""
        if self.lag_clock is not None and lsn_text:
            self.lag_clock.mark(lsn_text)

    def check(self):
        """A reading of every signal that is on, in the order of the table above."""
        readings = []
        for name in ("replica_lag", "wal_rate", "vacuum", "transaction_age", "lock_waiters", "connections",
                     "custom"):
            reading = getattr(self, f"_{name}")()
            if reading is not None:
                readings.append(reading)
        return readings

    def _query(self, sql, params=None):
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def _replica_lag(self):
        if self.lag_clock is None:
            return None
        positions = replica_positions(self.connection)
        lag = self.lag_clock.lag_ms(positions)
        limit = conf.max_replica_lag_ms
        return Reading("replica_lag", round(lag), limit, "ms", lag > limit,
                       describe_replicas(positions) if positions else "no streaming replica")

    def _wal_rate(self):
        limit = conf.background_max_wal_bytes_per_s
        if limit is None:
            return None
        lsn = lsn_to_int(self._query("SELECT pg_current_wal_lsn()::text")[0])
        now = self.clock()
        self.wal_samples.append((now, lsn))
        while len(self.wal_samples) > 2 and now - self.wal_samples[1][0] >= WAL_WINDOW_S:
            self.wal_samples.popleft()
        then, first = self.wal_samples[0]
        if now - then < 0.2:
            # One sample so far: measure over a short interval now rather than guess.
            time.sleep(0.5)
            return self._wal_rate()
        rate = (lsn - first) / (now - then)
        return Reading("wal_rate", round(rate), limit, "bytes/s", rate > limit,
                       f"over the last {now - then:.1f} s")

    def _vacuum(self):
        if not conf.background_pause_during_vacuum:
            return None
        count, who = self._query(
            "SELECT count(*), string_agg(CASE WHEN a.query LIKE 'autovacuum:%%' THEN 'autovacuum' ELSE 'VACUUM' END "
            "|| ' pid ' || p.pid || ' ' || p.phase, ', ') "
            "FROM pg_stat_progress_vacuum p LEFT JOIN pg_stat_activity a ON a.pid = p.pid "
            "WHERE p.relid = to_regclass(%s) AND p.datname = current_database()",
            [self.connection.ops.quote_name(self.table)])
        return Reading("vacuum", count, 0, "", count > 0, who or f"none on {self.table}")

    def _transaction_age(self):
        limit = conf.background_max_transaction_age_s
        if limit is None:
            return None
        row = self._query(
            "SELECT extract(epoch FROM now() - xact_start)::float, pid, state, left(query, 60) "
            "FROM pg_stat_activity WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND datname = current_database() "
            "ORDER BY xact_start LIMIT 1")
        if row is None:
            return Reading("transaction_age", 0.0, limit, "s", False, "no open transaction")
        age, pid, state, query = row
        return Reading("transaction_age", round(age, 1), limit, "s", age > limit,
                       f"pid {pid} ({state}): {query!r}")

    def _lock_waiters(self):
        limit = conf.background_max_lock_waiters
        if limit is None:
            return None
        count, pids = self._query(
            "SELECT count(*), string_agg(pid::text || ' (' || mode || ')', ', ') FROM pg_locks "
            "WHERE locktype = 'relation' AND relation = to_regclass(%s) AND NOT granted "
            "AND pid <> pg_backend_pid()", [self.connection.ops.quote_name(self.table)])
        return Reading("lock_waiters", count, limit, "", count > limit,
                       f"waiting for a lock on {self.table}: {pids}" if count else f"none on {self.table}")

    def _connections(self):
        limit = conf.background_max_connection_use
        if limit is None:
            return None
        used, available = self._query(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int "
            "- coalesce(current_setting('reserved_connections', true)::int, 0)")
        share = used / available if available > 0 else 1.0
        return Reading("connections", round(share, 3), limit, "ratio", share > limit,
                       f"{used} of {available} connections in use")

    def _custom(self):
        path = conf.background_health_check
        if not path:
            return None
        check = import_string(path)
        answer = check(connection=self.connection, table=self.table)
        if not answer:
            return Reading("custom", 0, None, "", False, path)
        return Reading("custom", 1, None, "", True, str(answer))


def stopping(readings):
    """The readings that say stop."""
    return [reading for reading in readings if reading.stop]
