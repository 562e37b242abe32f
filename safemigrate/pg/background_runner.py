"""The background runner: works through queued copies, batch by batch, outside the deploy.

``run_pending`` is the one public entry point: ``manage.py backfills run``
calls it, and so can a team's own task queue (docs/pages/background-migrations.md#task-queue).
It takes each runnable migration in turn, leases it (one runner per migration
at a time; a lease a dead runner left expires after ``LEASE_S``), and runs
its batches through the same engine as ``migrate`` (``pg.backfill``) with a
``BackgroundControl``, which

* reads every health signal before each batch and puts the migration
  ``on_hold`` for ``BACKGROUND_HOLD_S`` when one says stop;
* reads the migration's state inside each batch's transaction, so a pause
  or cancel takes effect within one batch;
* rests between batches to keep ``BACKGROUND_DUTY_CYCLE``;
* cancels a batch that runs past its timeout and retries it with half the
  rows;
* records rows, rows/s, duty cycle and the health readings in the row, in
  the batch's own transaction.

Safety with several runners (and a ``finalize`` at the same time) does not
rest on the lease: each batch takes its copy's transaction-level advisory
lock and reads the cursor under it (``pg.batch_progress``), so no range is
done twice. Transaction-level locks also work behind PgBouncer in
transaction mode. A runner killed mid-batch loses that batch's transaction;
the next runner redoes that one batch, nothing more.
"""

import json
import logging
import os
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError, connections, transaction
from django.db.migrations.loader import MigrationLoader

from ..conf import conf
from ..exceptions import BackgroundMigrationError
from . import background_state as bg
from . import catalog
from .backfill import RETRYABLE, InlineControl, model_batch, run_batches, sql_batch
from .background_mode import import_callable
from .ddl import sqlstate
from .health import Health, stopping

logger = logging.getLogger("safemigrate")

#: Seconds a runner's claim on a migration lasts without a batch renewing it.
LEASE_S = 15
QUERY_CANCELED = "57014"
UNDEFINED_TABLE, UNDEFINED_COLUMN = "42P01", "42703"


class Hold(Exception):
    def __init__(self, readings):
        super().__init__("; ".join(reading.describe() for reading in stopping(readings)))
        self.readings = readings


class Stopped(Exception):
    """The migration was paused or cancelled (or vanished) while it ran."""


class Yielded(Exception):
    """Another session is inside a batch of this migration."""


class OutOfTime(Exception):
    pass


@dataclass
class RunSummary:
    finished: list = field(default_factory=list)
    held: list = field(default_factory=list)
    stopped: list = field(default_factory=list)
    #: (name, error message)
    failed: list = field(default_factory=list)
    rows: int = 0


def _table(connection):
    return connection.ops.quote_name(bg.TABLE)


def _runner_id():
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _RowRecorder:
    """Inside each batch's transaction: is the migration still meant to run; then record the batch."""

    def __init__(self, connection, row, sizer_ref, renew_lease):
        self.connection, self.row, self.sizer_ref, self.renew_lease = connection, row, sizer_ref, renew_lease
        self.session_rows = 0
        self.readings = []

    def check(self, cursor, wanted):
        cursor.execute(f"SELECT state FROM {_table(self.connection)} WHERE id = %s", [self.row.pk])
        found = cursor.fetchone()
        if found is None or found[0] not in wanted:
            raise Stopped(found[0] if found else "gone")

    def record(self, cursor, batch, sizer):
        self.session_rows += batch.changed
        worked, rested = sizer.worked_s + batch.seconds, sizer.rested_s
        rate = self.session_rows / (worked + rested) if worked + rested else 0.0
        duty = worked / (worked + rested) if worked + rested else 0.0
        lease = ", lease_until = now() + make_interval(secs => %s)" if self.renew_lease else ""
        cursor.execute(
            f"UPDATE {_table(self.connection)} SET rows_done = %s, batches = batches + 1, batch_size = %s, "
            "attempts = 0, rows_per_second = %s, duty_cycle = %s, last_batch_ms = %s, last_batch_at = now(), "
            f"last_lsn = %s, health = %s::jsonb, updated_at = now(){lease} WHERE id = %s",
            [batch.rows_before + batch.changed, batch.size, rate, duty, int(batch.seconds * 1000), batch.lsn or "",
             json.dumps({r.signal: r.as_dict() for r in self.readings}),
             *([LEASE_S] if self.renew_lease else []), self.row.pk],
        )

    def retried(self, attempt, exc):
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {_table(self.connection)} SET attempts = %s, retries = retries + 1, updated_at = now() "
                "WHERE id = %s", [attempt + 1, self.row.pk])


class BackgroundControl:
    """The engine's control for a runner (see the module docstring)."""

    retryable = RETRYABLE | {QUERY_CANCELED}

    def __init__(self, connection, row, health, deadline, echo):
        self.connection, self.row, self.health, self.deadline, self.echo = connection, row, health, deadline, echo
        self.duty_cycle = conf.background_duty_cycle
        self.statement_timeout = f"{max(conf.statement_timeout_ms, 20 * conf.batch_target_ms)}ms"
        self.sizer = None
        self.recorder = _RowRecorder(connection, row, self, renew_lease=True)

    def before_batch(self, committed_rows):
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise OutOfTime()
        readings = self.health.check()
        self.recorder.readings = readings
        if stopping(readings):
            raise Hold(readings)

    def busy(self):
        raise Yielded()

    def in_batch(self, cursor):
        self.recorder.check(cursor, (bg.RUNNING,))

    def record(self, cursor, batch):
        self.recorder.record(cursor, batch, self.sizer)

    def after_batch(self, batch, sizer):
        self.health.mark(batch.lsn)

    def on_retry(self, attempt, exc):
        self.recorder.retried(attempt, exc)
        self.echo(f"{self.row.name}: batch retried with fewer rows (attempt {attempt + 2}): {_first_line(exc)}")


class FinalizeControl(InlineControl):
    """``finalize`` and the contract gate: inline throttling (replica wait), within a time budget."""

    def __init__(self, connection, row, result, report, deadline, sleep=time.sleep):
        super().__init__(connection, result, report, sleep)
        self.deadline = deadline
        self.recorder = _RowRecorder(connection, row, self, renew_lease=False)
        self.sizer = None

    def before_batch(self, committed_rows):
        if time.monotonic() >= self.deadline:
            raise OutOfTime()
        super().before_batch(committed_rows)

    def in_batch(self, cursor):
        self.recorder.check(cursor, (bg.QUEUED, bg.RUNNING, bg.ON_HOLD))

    def record(self, cursor, batch):
        self.recorder.record(cursor, batch, self.sizer)


class _Missing(DatabaseError):
    """The copy's table is gone (dropped by hand, or by a later migration)."""

    def __init__(self, table):
        super().__init__(f'relation "{table}" does not exist')
        self.table = table


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def batch_for(connection, row):
    """``(batch function, key column)`` of a row, from its stored spec."""
    spec = row.spec
    key = spec.get("key")
    if row.kind == "sql":
        from .backfill import key_column

        key, _ = key_column(connection, row.table_name, key)
        return sql_batch(connection, row.table_name, key, spec["set_sql"], spec.get("where_sql"),
                         bg.decode_params(spec.get("params"))), key
    code = import_callable(spec["callable"], spec.get("keywords") or {})
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    state = loader.project_state((row.app_label, row.migration), at_end=True)
    model = state.apps.get_model(row.app_label, spec["model_name"])
    return model_batch(connection, model, code, state.apps), key or model._meta.pk.column


def _lag_since(row):
    if not row.last_lsn or not row.last_batch_at:
        return None
    return row.last_lsn, max((bg.now() - row.last_batch_at).total_seconds(), 0.0)


def _set(connection, row, **fields):
    bg._objects(connection).filter(pk=row.pk).update(**fields)


def _fail(connection, row, message):
    try:
        bg.transition(connection, row.name, bg.FAILED, allowed=(bg.RUNNING, bg.QUEUED, bg.ON_HOLD),
                      reason=message.splitlines()[0], error=message, runner="", lease_until=None)
    except Exception:  # paused or cancelled meanwhile: the error stays in the log
        logger.exception("could not record the failure of %s", row.name)


def _failure_message(row, exc):
    state = sqlstate(exc) if isinstance(exc, DatabaseError) else None
    if isinstance(exc, _Missing) or state in (UNDEFINED_TABLE, UNDEFINED_COLUMN):
        why = (f"the table {row.table_name} or a column the copy uses no longer exists ({_first_line(exc)}). "
               f"If it was dropped on purpose, cancel this migration: `python manage.py backfills cancel "
               f"{row.name}`; otherwise restore it and `python manage.py backfills retry {row.name}`.")
    else:
        why = (f"{type(exc).__name__}: {_first_line(exc)}. Fix the cause (for a type change: the rows whose value "
               f"does not cast), then `python manage.py backfills retry {row.name}`: it resumes after the last "
               f"committed batch.")
    return (f"Background migration {row.name!r} failed after {row.rows_done:,} rows: {why} Every batch before "
            f"the failing one is committed; nothing was lost.\n\n"
            + "".join(traceback.format_exception_only(type(exc), exc)).strip())


def _take(connection, row, runner):
    """Lease ``row`` for this runner if it is runnable now; returns the fresh row or None."""
    now = bg.now()
    with transaction.atomic(using=connection.alias):
        fresh = bg._objects(connection).select_for_update(skip_locked=True).filter(pk=row.pk).first()
        if fresh is None:
            return None
        leased_by_other = fresh.runner and fresh.runner != runner and fresh.lease_until and fresh.lease_until > now
        runnable = (fresh.state == bg.QUEUED or (fresh.state == bg.ON_HOLD and fresh.hold_until <= now)
                    or (fresh.state == bg.RUNNING and not leased_by_other))
        if not runnable or leased_by_other:
            return None
        old = fresh.state
        fresh.state, fresh.runner = bg.RUNNING, runner
        fresh.lease_until = now + timedelta(seconds=LEASE_S)
        fresh.hold_until, fresh.hold_reason = None, ""
        fresh.started_at = fresh.started_at or now
        if catalog.table_exists(connection, fresh.table_name):  # the estimate may have been -1 (never analysed)
            fresh.rows_total = max(fresh.rows_total, catalog.estimated_rows(connection, fresh.table_name))
        fresh.save(using=connection.alias)
        if old != bg.RUNNING:
            reason = "hold over" if old == bg.ON_HOLD else f"taken by runner {runner}"
            transaction.on_commit(lambda: bg._send(connection, fresh, old, reason), using=connection.alias)
    return fresh


def run_one(connection, row, *, runner, deadline=None, echo=None, sleep=time.sleep):
    """Run a leased migration until it finishes, is held, stopped, yields or fails; returns the outcome word."""
    echo = echo or logger.info
    if not catalog.table_exists(connection, row.table_name):
        message = _failure_message(row, _Missing(row.table_name))
        _fail(connection, row, message)
        echo(message.split("\n\n")[0])
        return "failed"
    try:
        batch, key = batch_for(connection, row)
        health = Health(connection, row.table_name, lag_since=_lag_since(row))
        control = BackgroundControl(connection, row, health, deadline, echo)
        result = run_batches(connection, row.table_name, batch, name=row.name, key=key, control=control,
                             sleep=sleep, initial_size=row.batch_size or None)
    except Hold as hold:
        until = bg.now() + timedelta(seconds=conf.background_hold_s)
        reason = str(hold)
        try:
            bg.transition(connection, row.name, bg.ON_HOLD, allowed=(bg.RUNNING,), reason=reason,
                          hold_until=until, hold_reason=reason, throttle_reason=reason,
                          health={r.signal: r.as_dict() for r in hold.readings}, runner="", lease_until=None)
        except Exception:
            return "stopped"  # paused or cancelled while the signals were read
        echo(f"{row.name}: on hold for {conf.background_hold_s:g} s: {reason}")
        return "held"
    except Stopped as stop:
        echo(f"{row.name}: stopped, it is {stop.args[0]} now")
        return "stopped"
    except (Yielded, OutOfTime) as exc:
        _release(connection, row)
        return "yielded" if isinstance(exc, Yielded) else "out of time"
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the runner goes on
        message = _failure_message(bg.find(connection, row.name) or row, exc)
        _fail(connection, row, message)
        echo(message.split("\n\n")[0])
        return "failed"
    _finish(connection, row, reason=f"{result.rows:,} rows in {result.batches} batches by runner {row.runner}")
    echo(f"{row.name}: finished ({result.rows:,} rows in {result.batches} batches this run)")
    return "finished"


def _release(connection, row):
    """Give the migration back (another runner or a later run takes it)."""
    with transaction.atomic(using=connection.alias):
        fresh = bg._objects(connection).select_for_update().filter(pk=row.pk).first()
        if fresh is not None and fresh.state == bg.RUNNING:
            old = fresh.state
            fresh.state, fresh.runner, fresh.lease_until = bg.QUEUED, "", None
            fresh.save(using=connection.alias)
            transaction.on_commit(lambda: bg._send(connection, fresh, old, "released by its runner"),
                                  using=connection.alias)


def _finish(connection, row, reason):
    if row.spec.get("idempotent"):
        # Its condition skips rows already done: no cursor needs keeping (as inline).
        from .batch_progress import forget

        forget(connection, row.name)
    try:
        bg.transition(connection, row.name, bg.FINISHED, allowed=(bg.RUNNING, bg.QUEUED, bg.ON_HOLD),
                      reason=reason, finished_at=bg.now(), runner="", lease_until=None, hold_until=None,
                      hold_reason="", error="", rows_done=max(row.rows_done, _rows_of(connection, row)))
    except BackgroundMigrationError:
        # Finished by the other party meanwhile (a runner and a finalize both saw the last batch),
        # or paused / cancelled after the last batch: its state says which.
        current = bg.find(connection, row.name)
        if current is None or current.state not in bg.DONE:
            logger.warning("%s: every batch is done, but it is %s now", row.name,
                           current.state if current else "gone")


def _rows_of(connection, row):
    from .batch_progress import progress_of

    progress = progress_of(connection, row.name)
    return progress["rows"] if progress else bg.find(connection, row.name).rows_done


def _wait_for(rows, now):
    """Seconds until the earliest on-hold migration may run again or a foreign lease expires."""
    times = []
    for row in rows:
        if row.state == bg.ON_HOLD and row.hold_until:
            times.append((row.hold_until - now).total_seconds())
        elif row.state == bg.RUNNING and row.lease_until:
            times.append((row.lease_until - now).total_seconds())
    return max(min(times), 0.05) if times else None


def run_pending(using="default", *, names=None, forever=False, max_seconds=None, poll_s=5.0, echo=None,
                sleep=time.sleep):
    """Work through every runnable background migration; return a ``RunSummary``.

    Returns when nothing is queued, running or on hold any more (paused,
    failed, cancelled and finished ones are not waited for); with
    ``forever`` it keeps polling every ``poll_s`` seconds instead (a worker
    container). ``max_seconds`` bounds the whole call (a task queue's job):
    the migration in hand stops after its current batch and stays queued.
    ``names`` limits it to those migrations. Safe to call from several
    processes and hosts at once.
    """
    connection = connections[using]
    echo = echo or logger.info
    runner = _runner_id()
    deadline = time.monotonic() + max_seconds if max_seconds else None
    summary = RunSummary()
    said = set()
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return summary
        rows = [r for r in bg.all_rows(connection, bg.RUNNABLE) if names is None or r.name in names]
        progressed = False
        for row in rows:
            taken = _take(connection, row, runner)
            if taken is None:
                continue
            progressed = True
            before = taken.rows_done
            outcome = run_one(connection, taken, runner=runner, deadline=deadline, echo=echo, sleep=sleep)
            after = bg.find(connection, taken.name)
            summary.rows += max((after.rows_done if after else before) - before, 0)
            if outcome == "finished":
                summary.finished.append(taken.name)
            elif outcome == "held":
                summary.held.append(taken.name)
            elif outcome == "failed":
                summary.failed.append((taken.name, after.error if after else ""))
            elif outcome == "stopped":
                summary.stopped.append(taken.name)
            if outcome == "out of time":
                return summary
            if outcome == "yielded":  # another session (a finalize) is inside its batches: give it room
                sleep(min(poll_s, 1.0))
        if progressed:
            continue
        waiting = [r for r in bg.all_rows(connection, bg.RUNNABLE) if names is None or r.name in names]
        if not waiting and not forever:
            return summary
        delay = _wait_for(waiting, bg.now())
        delay = poll_s if delay is None else min(delay, poll_s if forever else delay)
        for row in waiting:
            line = (f"{row.name}: on hold until {row.hold_until:%H:%M:%S} ({row.hold_reason})"
                    if row.state == bg.ON_HOLD else
                    f"{row.name}: run by {row.runner} (lease until {row.lease_until:%H:%M:%S})"
                    if row.state == bg.RUNNING and row.lease_until else None)
            if line and (row.name, line) not in said:
                said.add((row.name, line))
                echo(f"waiting: {line}")
        if deadline is not None:
            delay = min(delay, max(deadline - time.monotonic(), 0))
        sleep(delay)


def finalize_inline(connection, name, budget_s, *, echo=None, report=None, sleep=time.sleep):
    """Run what is left of ``name`` in this process for at most ``budget_s`` seconds; returns the fresh row.

    Used by ``backfills finalize`` and by the contract gate. It runs next to
    any runner safely (the batch lock); a paused, failed or cancelled
    migration is left alone (the caller refuses, naming it).
    """
    from .backfill import BackfillResult
    from .reporting import current_report

    echo = echo or logger.info
    row = bg.get(connection, name)
    if row.state not in (bg.QUEUED, bg.RUNNING, bg.ON_HOLD) or budget_s <= 0:
        return row
    if not catalog.table_exists(connection, row.table_name):
        _fail(connection, row, _failure_message(row, _Missing(row.table_name)))
        return bg.get(connection, name)
    deadline = time.monotonic() + budget_s
    report = report or current_report()
    try:
        batch, key = batch_for(connection, row)
        control = FinalizeControl(connection, row, BackfillResult(name=name), report, deadline, sleep)
        result = run_batches(connection, row.table_name, batch, name=row.name, key=key, control=control,
                             sleep=sleep)
    except (OutOfTime, Stopped):
        return bg.get(connection, name)
    except Exception as exc:  # noqa: BLE001
        _fail(connection, row, _failure_message(bg.find(connection, name) or row, exc))
        raise
    _finish(connection, row, reason=f"finished inline ({result.rows:,} rows)")
    echo(f"{name}: finished inline ({result.rows:,} rows in {result.batches} batches)")
    return bg.get(connection, name)
