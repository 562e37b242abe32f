"""Replica replay lag, as a backfill sees it: the age of the oldest WAL it wrote that a replica has not replayed.

Every batch writes WAL that each streaming replica must replay. A copy that
writes faster than a replica replays (or keeps writing while replay is
stopped) leaves reads served by that replica further and further behind,
and makes the primary keep the WAL the replica still needs. Inside
``migrate`` the engine waits while a replica lags (``ReplicaWait``, bounded
by ``REPLICA_LAG_MAX_WAIT_S``); a background runner puts the migration on
hold instead (``safemigrate.pg.health``). Both read ``LagClock``.
"""

import time
from collections import deque
from dataclasses import dataclass

from ..exceptions import ReplicaLagError
from . import privileges

#: Seconds between two "paused" lines on the terminal.
PROGRESS_INTERVAL = 2.0


def lsn_to_int(text):
    """A ``pg_lsn`` as text (``'16/B374D848'``) to an integer, for comparisons."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class ReplicaPosition:
    """One walsender row of ``pg_stat_replication``, as far as this role may see it."""

    name: str
    state: "str | None"
    replay: "int | None"
    bytes_behind: "int | None"

    @property
    def hidden(self):
        # Without superuser or pg_read_all_stats, PostgreSQL shows only the pid.
        return self.state is None


def replica_positions(connection):
    """Where each streaming replica has replayed up to, read on the primary.

    Walsenders that replay nothing (``pg_basebackup`` in progress) have no
    ``replay_lsn`` and are left out.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(application_name, ''), state, replay_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), replay_lsn)::bigint "
            "FROM pg_stat_replication WHERE state IS NULL OR replay_lsn IS NOT NULL"
        )
        return [
            ReplicaPosition(name, state, lsn_to_int(replay) if replay else None, behind)
            for name, state, replay, behind in cursor.fetchall()
        ]


class LagClock:
    """How long ago this backfill wrote the oldest WAL a replica has not replayed.

    ``pg_stat_replication.replay_lag`` is not that. It is the delay measured
    for the last WAL the replica replayed, recomputed only when the replica
    reports, so when replay stops and nothing new is written it keeps the
    value it had, and after the replica catches up it keeps showing the old
    delay for up to two ``wal_receiver_status_interval`` before turning NULL.
    Bytes behind (``pg_wal_lsn_diff``) are honest about position but not
    about time. So the engine keeps its own clock: the WAL position after each
    batch, with the time it was written; the lag is the age of the oldest
    position the slowest replica has not reached. It keeps growing while
    replay is paused, and it is zero once every batch has been replayed.
    ``replay_lsn`` itself is as fresh as the replica's last report (sent on
    every WAL it receives, else every ``wal_receiver_status_interval``).
    """

    def __init__(self, connection, clock=time.monotonic, since=None):
        self.clock = clock
        self.samples = deque()
        if since is not None:
            # A background migration resumed by another runner (or after a
            # hold): its last batch's WAL position and age, so a replica that
            # has not replayed it is seen as lagging from then, not from now.
            lsn_text, age_s = since
            self.samples.append((lsn_to_int(lsn_text), self.clock() - age_s))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            self.mark(cursor.fetchone()[0])

    def mark(self, lsn_text):
        """Note that WAL up to ``lsn_text`` exists now."""
        self.samples.append((lsn_to_int(lsn_text), self.clock()))

    def lag_ms(self, positions):
        replays = [p.replay for p in positions if p.replay is not None]
        if not replays:
            return 0.0
        slowest = min(replays)
        while self.samples and self.samples[0][0] <= slowest:
            self.samples.popleft()
        if not self.samples:
            return 0.0
        return (self.clock() - self.samples[0][1]) * 1000


def replica_lag_ms(connection, lag_clock):
    """The slowest streaming replica's lag behind this backfill, in ms (0 without replicas)."""
    return lag_clock.lag_ms(replica_positions(connection))


def describe_replicas(positions):
    shown = [p for p in positions if not p.hidden]
    if not shown:
        return "no replica visible"
    return ", ".join(
        f"{p.name or 'unnamed'} ({p.state}, {(p.bytes_behind or 0) / 1048576:.1f} MB behind)" for p in shown
    )


class ReplicaWait:
    """Pauses a backfill while a replica lags, for at most REPLICA_LAG_MAX_WAIT_S at a time."""

    def __init__(self, connection, result, report, max_lag_ms, max_wait_s, sleep):
        self.connection, self.result, self.report = connection, result, report
        self.max_lag_ms, self.max_wait_s, self.sleep = max_lag_ms, max_wait_s, sleep
        self.clock = None
        if max_lag_ms is None:
            return
        self.clock = LagClock(connection)
        if any(p.hidden for p in replica_positions(connection)):
            privileges.note_hidden_replicas(connection)  # once per run

    def mark(self, lsn_text):
        if self.clock is not None and lsn_text:
            self.clock.mark(lsn_text)

    def wait(self, committed_rows):
        if self.clock is None:
            return
        started = time.monotonic()
        last_line = None
        while True:
            lag = replica_lag_ms(self.connection, self.clock)
            waited = time.monotonic() - started
            if lag <= self.max_lag_ms:
                if last_line is not None:
                    self.report.progress(f"{self.result.name}: replicas caught up after {waited:.1f}s, resuming")
                return
            positions = replica_positions(self.connection)
            if waited >= self.max_wait_s:
                raise ReplicaLagError(
                    f"Backfill {self.result.name!r} stopped: a streaming replica has not replayed WAL this "
                    f"backfill wrote {lag / 1000:.1f}s ago (MAX_REPLICA_LAG_MS is {self.max_lag_ms}), and "
                    f"it waited {waited:.0f}s for it to catch up (REPLICA_LAG_MAX_WAIT_S is "
                    f"{self.max_wait_s}). Replicas: {describe_replicas(positions)}. Writing more would "
                    "push the replica further behind: reads served by it get staler, and the primary "
                    "keeps the WAL it still needs (filling its disk) or drops it, and then the replica "
                    f"must be rebuilt. The {committed_rows:,} rows done so far are committed. Find out why "
                    "the replica is not replaying (on the replica: SELECT pg_is_wal_replay_paused(); "
                    "long queries holding replay back), then run the same migrate command again: it "
                    "resumes after the last committed batch. To wait longer, raise REPLICA_LAG_MAX_WAIT_S.",
                    name=self.result.name, lag_ms=lag, waited_s=waited, replicas=positions,
                )
            self.result.lag_waits += 1
            now = time.monotonic()
            if last_line is None or now - last_line >= PROGRESS_INTERVAL:
                last_line = now
                self.report.progress(
                    f"{self.result.name}: paused, replicas lag {lag / 1000:.1f}s > {self.max_lag_ms} ms "
                    f"({describe_replicas(positions)}); waited {waited:.0f}s of at most {self.max_wait_s}s"
                )
            self.sleep(1.0)
