"""The batched backfill engine shared by every data-moving operation.

One ``UPDATE`` over a big table holds row locks on every row it touched
until it commits, bloats the table in one go, makes replicas fall behind and
starts from zero when killed. Here the work is cut into keyset batches on a
unique key (``WHERE key > last AND key <= next``: each batch costs the same
wherever it is, unlike OFFSET), each batch is its own short transaction with
a bounded lock wait, and its size adapts so that one batch takes about
``BATCH_TARGET_MS``.

The highest key is read once, when the backfill starts. Rows inserted later
are not its job (the expand step's triggers or defaults fill them), so a
table under constant inserts cannot keep it running forever.

Progress is committed in the same transaction as each batch, in the table
``safemigrate_backfill_progress``: a killed run resumes after the last
committed batch, and running a finished backfill again does nothing. The
table is created on first use rather than by a migration, so the engine
also works from other apps' migrations that run before safemigrate's.

Before each batch the engine checks the streaming replicas (``LagClock``) and
writes nothing while one lags more than ``MAX_REPLICA_LAG_MS``. That pause is
bounded by ``REPLICA_LAG_MAX_WAIT_S``: a replica that stopped replaying must
not hold a deploy forever, and as every batch is already committed, stopping
with ``ReplicaLagError`` loses nothing; the next run resumes.
"""

import time
from collections import deque
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from ..conf import conf
from ..exceptions import MissingPrimaryKeyError, ReplicaLagError
from . import catalog
from .ddl import LOCK_NOT_AVAILABLE, backoff_seconds, sqlstate
from .reporting import current_report

PROGRESS_TABLE = "safemigrate_backfill_progress"
DEADLOCK = "40P01"
RETRYABLE = {LOCK_NOT_AVAILABLE, DEADLOCK}
MAX_BATCH_RETRIES = 20
#: Seconds between two progress lines on the terminal.
PROGRESS_INTERVAL = 2.0


@dataclass
class BackfillResult:
    name: str
    rows: int = 0
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    resumed: bool = False
    already_done: bool = False
    lag_waits: int = 0

    @property
    def rate(self):
        return self.rows / self.seconds if self.seconds else 0.0


def _connection(schema_editor_or_connection):
    if isinstance(schema_editor_or_connection, BaseDatabaseSchemaEditor):
        return schema_editor_or_connection.connection
    return schema_editor_or_connection


def ensure_progress_table(connection):
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {connection.ops.quote_name(PROGRESS_TABLE)} (
                name text PRIMARY KEY,
                table_name text NOT NULL,
                last_key text,
                upper_key text,
                rows bigint NOT NULL DEFAULT 0,
                batches integer NOT NULL DEFAULT 0,
                done boolean NOT NULL DEFAULT false,
                updated_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )


def forget(connection, name):
    """Drop the progress of ``name`` (used when an operation is reversed)."""
    if catalog.table_exists(connection, PROGRESS_TABLE):
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(PROGRESS_TABLE)} WHERE name = %s", [name])


def forget_table(connection, table):
    """Drop every progress record of ``table`` (the table itself is gone)."""
    if not catalog.table_exists(connection, PROGRESS_TABLE):
        return
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(PROGRESS_TABLE)} WHERE table_name = %s", [table])


def progress_of(connection, name):
    if not catalog.table_exists(connection, PROGRESS_TABLE):
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT last_key, upper_key, rows, batches, done FROM {connection.ops.quote_name(PROGRESS_TABLE)} "
            "WHERE name = %s",
            [name],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(["last_key", "upper_key", "rows", "batches", "done"], row))


def key_column(connection, table, key=None):
    """The single, orderable key to paginate on, and its SQL type."""
    if key is None:
        columns = catalog.primary_key_columns(connection, table)
        if len(columns) != 1:
            raise MissingPrimaryKeyError(
                f"Cannot backfill {table!r} in batches: it has "
                f"{'no primary key' if not columns else 'a composite primary key ' + repr(columns)}. "
                f"Batches are cut on one unique, ordered column, so that each batch is found by "
                f"an index and no row is visited twice. Pass key='<column>' naming a unique, "
                f"NOT NULL, indexed column, or add a single-column primary key first."
            )
        key = columns[0]
    info = catalog.column_info(connection, table, key)
    if info is None:
        raise MissingPrimaryKeyError(f"Cannot backfill {table!r}: key column {key!r} does not exist.")
    return key, info["type"]


def _lsn(text):
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
            ReplicaPosition(name, state, _lsn(replay) if replay else None, behind)
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

    def __init__(self, connection, clock=time.monotonic):
        self.clock = clock
        self.samples = deque()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn()::text")
            self.mark(cursor.fetchone()[0])

    def mark(self, lsn_text):
        """Note that WAL up to ``lsn_text`` exists now."""
        self.samples.append((_lsn(lsn_text), self.clock()))

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


def _describe_replicas(positions):
    shown = [p for p in positions if not p.hidden]
    if not shown:
        return "no replica visible"
    return ", ".join(
        f"{p.name or 'unnamed'} ({p.state}, {(p.bytes_behind or 0) / 1048576:.1f} MB behind)" for p in shown
    )


class _ReplicaThrottle:
    """Pauses a backfill while a replica lags, for at most REPLICA_LAG_MAX_WAIT_S at a time."""

    def __init__(self, connection, result, report, max_lag_ms, max_wait_s, sleep):
        self.connection, self.result, self.report = connection, result, report
        self.max_lag_ms, self.max_wait_s, self.sleep = max_lag_ms, max_wait_s, sleep
        self.clock = None
        if max_lag_ms is None:
            return
        self.clock = LagClock(connection)
        if any(p.hidden for p in replica_positions(connection)):
            report.progress(
                f"{result.name}: cannot see replica positions in pg_stat_replication (the migration "
                "role needs pg_read_all_stats); replicas it cannot see do not throttle this backfill"
            )

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
                    f"{self.max_wait_s}). Replicas: {_describe_replicas(positions)}. Writing more would "
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
                    f"({_describe_replicas(positions)}); waited {waited:.0f}s of at most {self.max_wait_s}s"
                )
            self.sleep(1.0)


def run_batches(
    schema_editor_or_connection,
    table,
    batch,
    *,
    name,
    key=None,
    batch_target_ms=None,
    pause_ms=None,
    initial_size=None,
    record=None,
    sleep=time.sleep,
):
    """Call ``batch(cursor, low, high)`` for consecutive key ranges until done.

    ``low`` is exclusive (None for the first batch), ``high`` inclusive;
    ``batch`` returns how many rows it changed. Each call runs in its own
    transaction together with the progress update.
    """
    connection = _connection(schema_editor_or_connection)
    report = current_report()
    key, key_type = key_column(connection, table, key)
    quoted_table, quoted_key = connection.ops.quote_name(table), connection.ops.quote_name(key)
    target = (conf.batch_target_ms if batch_target_ms is None else batch_target_ms) / 1000.0
    pause = (conf.batch_pause_ms if pause_ms is None else pause_ms) / 1000.0
    size = initial_size or conf.batch_initial_size
    min_size, max_size = conf.batch_min_size, conf.batch_max_size
    progress_table = connection.ops.quote_name(PROGRESS_TABLE)
    result = BackfillResult(name=name)

    ensure_progress_table(connection)
    saved = progress_of(connection, name)
    if saved and saved["done"]:
        result.already_done = True
        if record is not None:
            record.skipped = True
        return result
    if saved is None:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT max({quoted_key})::text FROM {quoted_table}")
            upper = cursor.fetchone()[0]
            cursor.execute(
                f"INSERT INTO {progress_table} (name, table_name, upper_key) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                [name, table, upper],
            )
        saved = progress_of(connection, name)
    else:
        result.resumed = True
    last, upper = saved["last_key"], saved["upper_key"]
    done_rows, done_batches = saved["rows"], saved["batches"]
    estimate = max(catalog.estimated_rows(connection, table), 0)
    started = time.monotonic()
    last_report = started
    throttle = _ReplicaThrottle(connection, result, report, conf.max_replica_lag_ms,
                                conf.replica_lag_max_wait_s, sleep)
    def next_high(cursor):
        lower = f"{quoted_key} > %s::{key_type} AND " if last is not None else ""
        cursor.execute(
            f"SELECT max(k)::text FROM (SELECT {quoted_key} AS k FROM {quoted_table} "
            f"WHERE {lower}{quoted_key} <= %s::{key_type} ORDER BY {quoted_key} LIMIT %s) AS batch",
            ([last] if last is not None else []) + [upper, size],
        )
        return cursor.fetchone()[0]

    while upper is not None:
        throttle.wait(done_rows + result.rows)
        attempt = 0
        while True:
            batch_started = time.monotonic()
            try:
                with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', '0', true)",
                        [f"{conf.lock_timeout_ms}ms"],
                    )
                    high = next_high(cursor)
                    changed = 0 if high is None else batch(cursor, last, high, key_type)
                    cursor.execute(
                        f"UPDATE {progress_table} SET last_key = %s, rows = rows + %s, "
                        "batches = batches + %s, done = %s, updated_at = now() WHERE name = %s "
                        "RETURNING pg_current_wal_insert_lsn()::text",
                        [high if high is not None else last, changed, 0 if high is None else 1,
                         high is None or high == upper, name],
                    )
                    written = cursor.fetchone()[0]
                throttle.mark(written)
                break
            except DatabaseError as exc:
                if sqlstate(exc) not in RETRYABLE or attempt >= MAX_BATCH_RETRIES:
                    raise
                result.retries += 1
                size = max(min_size, size // 2)
                sleep(backoff_seconds(attempt))
                attempt += 1
        duration = time.monotonic() - batch_started
        if high is None:
            break
        result.rows += changed
        result.batches += 1
        last = high
        # Aim the next batch at the target duration; grow at most 2x at a time.
        if duration > 0:
            size = int(min(max_size, max(min_size, min(size * 2, size * target / duration))))
        now = time.monotonic()
        if now - last_report >= PROGRESS_INTERVAL:
            last_report = now
            rate = result.rows / (now - started)
            total = max(estimate, done_rows + result.rows)
            eta = (total - done_rows - result.rows) / rate if rate else 0
            report.progress(
                f"{name}: {done_rows + result.rows:,}/{total:,} rows, {rate:,.0f} rows/s, "
                f"ETA {eta:.0f}s (batch {size})"
            )
        if last == upper:
            break
        if pause:
            sleep(pause)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {progress_table} SET done = true WHERE name = %s", [name])
    result.seconds = time.monotonic() - started
    if record is not None:
        record.rows += result.rows
        record.batches += result.batches
        record.lock_retries += result.retries
        record.detail = (
            f"{result.rate:,.0f} rows/s" + (f", resumed after {done_batches} batches" if result.resumed else "")
        )
    return result


def backfill_table(
    schema_editor_or_connection,
    table,
    *,
    set_sql,
    where_sql=None,
    params=None,
    key=None,
    progress_name=None,
    batch_target_ms=None,
    pause_ms=None,
    record=None,
    sleep=time.sleep,
):
    """``UPDATE table SET <set_sql> [WHERE <where_sql>]`` in resumable batches.

    ``set_sql`` / ``where_sql`` are SQL fragments with identifiers already
    quoted by the caller; ``params`` fill their ``%s`` placeholders. Without
    ``params`` a ``%`` in them is a literal character (as in Django's
    ``RunSQL`` without params): the batch bounds are passed as parameters, so
    it is escaped here rather than handed to the driver as a placeholder.
    """
    connection = _connection(schema_editor_or_connection)
    if getattr(schema_editor_or_connection, "collect_sql", False):
        schema_editor_or_connection.collected_sql.append(
            f"-- safemigrate: in keyset batches of ~{conf.batch_target_ms} ms, each its own transaction, "
            f"resumable (progress in {PROGRESS_TABLE}):"
        )
        schema_editor_or_connection.collected_sql.append(
            f"-- UPDATE {connection.ops.quote_name(table)} SET {set_sql}"
            + (f" WHERE {where_sql}" if where_sql else "") + " AND <key in batch range>;"
        )
        return BackfillResult(name=progress_name or table)
    key_name, _ = key_column(connection, table, key)
    quoted_table, quoted_key = connection.ops.quote_name(table), connection.ops.quote_name(key_name)
    name = progress_name or f"{table}: SET {set_sql} WHERE {where_sql or 'true'}"
    if not params:
        set_sql = set_sql.replace("%", "%%")
        where_sql = where_sql.replace("%", "%%") if where_sql else where_sql
    where = f"({where_sql}) AND " if where_sql else ""

    def batch(cursor, low, high, key_type):
        lower = f"{quoted_key} > %s::{key_type} AND " if low is not None else ""
        cursor.execute(
            f"UPDATE {quoted_table} SET {set_sql} WHERE {where}{lower}{quoted_key} <= %s::{key_type}",
            [*(params or []), *([low] if low is not None else []), high],
        )
        return cursor.rowcount

    return run_batches(
        schema_editor_or_connection, table, batch, name=name, key=key_name,
        batch_target_ms=batch_target_ms, pause_ms=pause_ms, record=record, sleep=sleep,
    )
