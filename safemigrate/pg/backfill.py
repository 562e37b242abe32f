"""The batched backfill engine shared by every data-moving operation.

One ``UPDATE`` over a big table holds row locks on every row it touched
until it commits, bloats the table in one go, makes replicas fall behind and
starts from zero when killed. Here the work is cut into keyset batches on a
unique key (``WHERE key > last AND key <= next``: each batch costs the same
wherever it is, unlike OFFSET), each batch is its own short transaction with
a bounded lock wait, and its size adapts so that one batch takes about
``BATCH_TARGET_MS``.

``run_batches`` is the loop; each concern it strings together lives in its
own module:

* bookkeeping, the cursor committed with each batch and the per-copy batch
  lock: ``batch_progress``;
* sizing (target batch time, duty cycle, bounded growth): ``batch_size``;
* retry: ``_one_batch`` below (a lock not granted, a deadlock, and in the
  background a batch timeout, each retried with half the rows);
* throttle: a *control* object. Inside ``migrate`` it is ``InlineControl``:
  it waits while a replica lags (``replica_lag.ReplicaWait``, bounded by
  ``REPLICA_LAG_MAX_WAIT_S``). A background runner passes its own
  (``background_runner``), which reads every health signal, puts the
  migration on hold, and notices a pause within one batch;
* progress lines: ``ProgressLine``; records: ``_record``.

The highest key is read once, when the copy starts. Rows inserted later are
not its job (the expand step's triggers or defaults fill them), so a table
under constant inserts cannot keep it running forever.
"""

import time
from dataclasses import dataclass

from django.db import DatabaseError, transaction
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

from ..conf import conf
from ..exceptions import MissingPrimaryKeyError
from . import catalog, partition_tree
from .batch_progress import (  # noqa: F401  (the progress table's functions are the engine's API)
    PROGRESS_TABLE,
    Progress,
    ensure_progress_table,
    forget,
    forget_table,
    progress_of,
)
from .batch_size import BatchSizer
from .ddl import LOCK_NOT_AVAILABLE, backoff_seconds, sqlstate
from .replica_lag import ReplicaWait
from .reporting import current_report

DEADLOCK = "40P01"
RETRYABLE = {LOCK_NOT_AVAILABLE, DEADLOCK}
MAX_BATCH_RETRIES = 20
#: Seconds between two progress lines on the terminal.
PROGRESS_INTERVAL = 2.0
#: Seconds an inline run waits before asking again for a batch lock another session holds.
BUSY_WAIT_S = 0.05


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


def key_column(connection, table, key=None):
    """The single, orderable key to paginate on, and its SQL type."""
    if key is None:
        columns = catalog.primary_key_columns(connection, table)
        partition_key = partition_tree.batch_key(connection, table, columns)  # hook: issue 24
        if partition_key:
            columns = [partition_key]
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


class InlineControl:
    """How a copy inside ``migrate`` is throttled: it waits while a replica lags, and never stops early."""

    duty_cycle = 1.0
    statement_timeout = "0"
    retryable = RETRYABLE
    #: The loop's BatchSizer (set by run_batches).
    sizer = None

    def __init__(self, connection, result, report, sleep):
        self.sleep = sleep
        self.wait = ReplicaWait(connection, result, report, conf.max_replica_lag_ms,
                                conf.replica_lag_max_wait_s, sleep)

    def before_batch(self, committed_rows):
        self.wait.wait(committed_rows)

    def busy(self):
        """Another session is inside a batch of this copy (a runner, a finalize): let it finish."""
        self.sleep(BUSY_WAIT_S)

    def in_batch(self, cursor):
        """Inside the batch transaction, before the batch (a runner checks its state here)."""

    def record(self, cursor, batch):
        """Inside the batch transaction, after it (a runner updates its row here)."""

    def after_batch(self, batch, sizer):
        self.wait.mark(batch.lsn)

    def on_retry(self, attempt, exc):
        pass


@dataclass
class Batch:
    """What one committed batch did."""

    low: "str | None"
    high: "str | None"
    changed: int
    done: bool
    seconds: float
    size: int
    lsn: "str | None" = None
    rows_before: int = 0
    #: Nothing was left to do (another session finished the copy, or the range was empty).
    finished: bool = False


class _Busy(Exception):
    pass


def _next_high(cursor, quoted_table, quoted_key, key_type, last, upper, size):
    lower = f"{quoted_key} > %s::{key_type} AND " if last is not None else ""
    cursor.execute(
        f"SELECT max(k)::text FROM (SELECT {quoted_key} AS k FROM {quoted_table} "
        f"WHERE {lower}{quoted_key} <= %s::{key_type} ORDER BY {quoted_key} LIMIT %s) AS batch",
        ([last] if last is not None else []) + [upper, size],
    )
    return cursor.fetchone()[0]


def _one_batch(connection, progress, batch, key_type, sizer, control, result, sleep):
    """Run the next batch in its own transaction, retried (smaller) when it may succeed on a second try."""
    attempt = 0
    while True:
        began = time.monotonic()
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    [f"{conf.lock_timeout_ms}ms", control.statement_timeout],
                )
                cursor_row = progress.claim(cursor)
                if cursor_row is None:
                    raise _Busy()
                if cursor_row.done or cursor_row.upper is None:
                    return Batch(cursor_row.last, None, 0, True, 0.0, sizer.size, finished=True)
                control.in_batch(cursor)
                last, upper = cursor_row.last, cursor_row.upper
                high = _next_high(cursor, progress.quoted_table, progress.quoted_key, key_type, last, upper,
                                  sizer.size)
                changed = 0 if high is None else batch(cursor, last, high, key_type)
                done = high is None or high == upper
                lsn = progress.advance(cursor, high, last, changed, done)
                outcome = Batch(last, high, changed, done, time.monotonic() - began, sizer.size, lsn,
                                rows_before=cursor_row.rows, finished=high is None)
                control.record(cursor, outcome)
            return outcome
        except _Busy:
            control.busy()
        except DatabaseError as exc:
            if sqlstate(exc) not in control.retryable or attempt >= MAX_BATCH_RETRIES:
                raise
            result.retries += 1
            sizer.shrink()
            control.on_retry(attempt, exc)
            sleep(backoff_seconds(attempt))
            attempt += 1


class ProgressLine:
    """Rows done / estimated total, rate and ETA, every PROGRESS_INTERVAL seconds."""

    def __init__(self, report, name, estimate, started):
        self.report, self.name, self.estimate = report, name, estimate
        self.started = self.last = started

    def tick(self, done_before, result, size):
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        rate = result.rows / (now - self.started)
        total = max(self.estimate, done_before + result.rows)
        eta = (total - done_before - result.rows) / rate if rate else 0
        self.report.progress(
            f"{self.name}: {done_before + result.rows:,}/{total:,} rows, {rate:,.0f} rows/s, "
            f"ETA {eta:.0f}s (batch {size})"
        )


def _record(record, result, done_batches):
    if record is None:
        return
    record.rows += result.rows
    record.batches += result.batches
    record.lock_retries += result.retries
    record.detail = (
        f"{result.rate:,.0f} rows/s" + (f", resumed after {done_batches} batches" if result.resumed else "")
    )


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
    control=None,
):
    """Call ``batch(cursor, low, high, key_type)`` for consecutive key ranges until done.

    ``low`` is exclusive (None for the first batch), ``high`` inclusive;
    ``batch`` returns how many rows it changed. Each call runs in its own
    transaction together with the progress update. ``control`` throttles and
    may stop the loop (``InlineControl`` by default).
    """
    connection = _connection(schema_editor_or_connection)
    report = current_report()
    key, key_type = key_column(connection, table, key)
    progress = Progress(connection, name, table, connection.ops.quote_name(table), connection.ops.quote_name(key))
    result = BackfillResult(name=name)
    saved, result.resumed = progress.start()
    if saved.done:
        result.already_done = True
        if record is not None:
            record.skipped = True
        return result
    control = control or InlineControl(connection, result, report, sleep)
    sizer = BatchSizer(
        size=initial_size or conf.batch_initial_size,
        target_s=(conf.batch_target_ms if batch_target_ms is None else batch_target_ms) / 1000.0,
        min_size=conf.batch_min_size, max_size=conf.batch_max_size, duty_cycle=control.duty_cycle,
        pause_s=(conf.batch_pause_ms if pause_ms is None else pause_ms) / 1000.0,
    )
    control.sizer = sizer
    started = time.monotonic()
    line = ProgressLine(report, name, max(catalog.estimated_rows(connection, table), 0), started)
    try:
        while True:
            control.before_batch(saved.rows + result.rows)
            done = _one_batch(connection, progress, batch, key_type, sizer, control, result, sleep)
            if done.finished:
                break
            report.batch(name, done.seconds, done.changed)  # hook: batch times for manage.py rehearse
            result.rows += done.changed
            result.batches += 1
            control.after_batch(done, sizer)
            sizer.observe(done.seconds)
            line.tick(saved.rows, result, sizer.size)
            if done.done:
                break
            rest = sizer.rest_after(done.seconds)
            if rest:
                sleep(rest)
                sizer.rested(rest)
        progress.finish()
    finally:
        result.seconds = time.monotonic() - started
    _record(record, result, saved.batches)
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
    control=None,
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
    name = progress_name or f"{table}: SET {set_sql} WHERE {where_sql or 'true'}"
    batch = sql_batch(connection, table, key_name, set_sql, where_sql, params)
    return run_batches(
        schema_editor_or_connection, table, batch, name=name, key=key_name,
        batch_target_ms=batch_target_ms, pause_ms=pause_ms, record=record, sleep=sleep, control=control,
    )


def sql_batch(connection, table, key, set_sql, where_sql=None, params=None):
    """The batch function of ``UPDATE table SET set_sql [WHERE where_sql]`` (see ``backfill_table``)."""
    quoted_table, quoted_key = connection.ops.quote_name(table), connection.ops.quote_name(key)
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

    return batch


def model_batch(connection, model, code, apps):
    """The batch function calling ``code(apps, rows)`` with the batch's instances, in key order."""
    pk = model._meta.pk
    manager = model._base_manager.using(connection.alias)

    def batch(cursor, low, high, key_type):
        rows = manager.filter(pk__lte=pk.to_python(high))
        if low is not None:
            rows = rows.filter(pk__gt=pk.to_python(low))
        rows = list(rows.order_by("pk"))
        code(apps, rows)
        return len(rows)

    return batch
