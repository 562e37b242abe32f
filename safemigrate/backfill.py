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
"""

import time
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from . import introspection
from .conf import conf
from .exceptions import MissingPrimaryKeyError
from .locking import LOCK_NOT_AVAILABLE, backoff_seconds, sqlstate
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
    if introspection.table_exists(connection, PROGRESS_TABLE):
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(PROGRESS_TABLE)} WHERE name = %s", [name])


def progress_of(connection, name):
    if not introspection.table_exists(connection, PROGRESS_TABLE):
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
        columns = introspection.primary_key_columns(connection, table)
        if len(columns) != 1:
            raise MissingPrimaryKeyError(
                f"Cannot backfill {table!r} in batches: it has "
                f"{'no primary key' if not columns else 'a composite primary key ' + repr(columns)}. "
                f"Batches are cut on one unique, ordered column, so that each batch is found by "
                f"an index and no row is visited twice. Pass key='<column>' naming a unique, "
                f"NOT NULL, indexed column, or add a single-column primary key first."
            )
        key = columns[0]
    info = introspection.column_info(connection, table, key)
    if info is None:
        raise MissingPrimaryKeyError(f"Cannot backfill {table!r}: key column {key!r} does not exist.")
    return key, info["type"]


def replica_lag_ms(connection):
    """Worst replay lag of the streaming replicas, in ms (0 without replicas)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(max(extract(epoch FROM coalesce(replay_lag, write_lag))) * 1000, 0) "
            "FROM pg_stat_replication"
        )
        return float(cursor.fetchone()[0] or 0)


def _wait_for_replicas(connection, result, report, max_lag_ms, sleep):
    if max_lag_ms is None:
        return
    while True:
        lag = replica_lag_ms(connection)
        if lag <= max_lag_ms:
            return
        result.lag_waits += 1
        report.progress(f"{result.name}: replicas lag {lag:.0f} ms > {max_lag_ms} ms, pausing")
        sleep(1.0)


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
    estimate = max(introspection.estimated_rows(connection, table), 0)
    started = time.monotonic()
    last_report = started
    def next_high(cursor):
        lower = f"{quoted_key} > %s::{key_type} AND " if last is not None else ""
        cursor.execute(
            f"SELECT max(k)::text FROM (SELECT {quoted_key} AS k FROM {quoted_table} "
            f"WHERE {lower}{quoted_key} <= %s::{key_type} ORDER BY {quoted_key} LIMIT %s) AS batch",
            ([last] if last is not None else []) + [upper, size],
        )
        return cursor.fetchone()[0]

    while upper is not None:
        _wait_for_replicas(connection, result, report, conf.max_replica_lag_ms, sleep)
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
                        "batches = batches + %s, done = %s, updated_at = now() WHERE name = %s",
                        [high if high is not None else last, changed, 0 if high is None else 1,
                         high is None or high == upper, name],
                    )
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
