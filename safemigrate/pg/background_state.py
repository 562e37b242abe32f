"""Background migrations: their rows, the state machine, and the signal on each change.

States (docs/pages/background-migrations.md)::

    queued -> running <-> paused | on_hold(until, reason) -> finished -> finalized
                      \\-> failed (retry -> queued)     cancelled (retry -> queued)

Every change goes through ``transition``: it locks the row, checks that the
change is allowed from the state the row is in *now* (two commands, a runner
and the admin page may act at once), saves it, and sends
``background_migration_state_changed`` once committed. A runner reads the
state inside each batch's transaction, so a pause takes effect within one
batch.
"""

import base64
import datetime
import decimal
import logging
import uuid
from types import SimpleNamespace

from django.db import DatabaseError, transaction
from django.utils import timezone

from ..exceptions import BackgroundMigrationError, UnknownBackgroundMigration
from . import catalog
from .batch_progress import BATCH_LOCK_CLASS, progress_of
from .ddl import run_ddl, sqlstate

logger = logging.getLogger("safemigrate")

TABLE = "safemigrate_background_migration"
QUEUED, RUNNING, PAUSED, ON_HOLD = "queued", "running", "paused", "on_hold"
FINISHED, FINALIZED, FAILED, CANCELLED = "finished", "finalized", "failed", "cancelled"
#: Work left, and someone will do it (a runner, or a resume).
ACTIVE = (QUEUED, RUNNING, PAUSED, ON_HOLD)
#: The columns it fills are not filled yet.
UNFINISHED = (*ACTIVE, FAILED, CANCELLED)
DONE = (FINISHED, FINALIZED)
#: A runner may take it (on_hold once its hold is over).
RUNNABLE = (QUEUED, RUNNING, ON_HOLD)
DUPLICATE_TABLE, UNIQUE_VIOLATION = "42P07", "23505"
#: Key of the advisory lock that serialises creating the table on first use.
_CREATE_LOCK = (BATCH_LOCK_CLASS, 0)


def _model():
    from ..models import BackgroundMigration

    return BackgroundMigration


def _objects(connection):
    return _model().objects.using(connection.alias)


# -- the table ---------------------------------------------------------------------


def tables_exist(connection):
    return catalog.table_exists(connection, TABLE)


def create_table_statements(connection):
    """The model's CREATE TABLE and indexes, as Django's schema editor writes them (a new table: no lock
    on anything existing). The same DDL as safemigrate's migration 0001, which skips an existing table."""
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        editor.create_model(_model())
        return [sql.rstrip(";") for sql in editor.collected_sql]


def ensure_tables(connection):
    """Create the table on first use: an app's expand migration may enqueue before safemigrate's 0001 ran.

    Serialised by an advisory transaction lock taken first in the creating
    transaction: a second process creating it at once waits, then finds the
    table and lets its own CREATE's error go.
    """
    if tables_exist(connection):
        return
    statements = [("SELECT pg_advisory_xact_lock(%s, %s)", list(_CREATE_LOCK)),
                  *create_table_statements(connection)]
    try:
        run_ddl(SimpleNamespace(connection=connection, collect_sql=False), statements, table=TABLE)
    except DatabaseError as exc:
        # The other creator held the lock, committed, and this CREATE found its table.
        if sqlstate(exc) not in (DUPLICATE_TABLE, UNIQUE_VIOLATION) or not tables_exist(connection):
            raise


# -- parameters as JSON --------------------------------------------------------------


def encode_params(params):
    """Query parameters as JSON values that decode to the same Python values (types tagged)."""
    out = []
    for value in params or []:
        if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
            out.append(value)
        elif isinstance(value, decimal.Decimal):
            out.append({"decimal": str(value)})
        elif isinstance(value, datetime.datetime):
            out.append({"datetime": value.isoformat()})
        elif isinstance(value, datetime.date):
            out.append({"date": value.isoformat()})
        elif isinstance(value, datetime.time):
            out.append({"time": value.isoformat()})
        elif isinstance(value, datetime.timedelta):
            out.append({"timedelta": value.total_seconds()})
        elif isinstance(value, uuid.UUID):
            out.append({"uuid": str(value)})
        elif isinstance(value, bytes):
            out.append({"bytes": base64.b64encode(value).decode()})
        else:
            raise BackgroundMigrationError(
                f"Cannot run this copy in the background: its parameter {value!r} ({type(value).__name__}) "
                f"cannot be stored for the runner. Pass background=False to run it inside migrate.")
    return out


def decode_params(values):
    decoders = {
        "decimal": decimal.Decimal, "datetime": datetime.datetime.fromisoformat,
        "date": datetime.date.fromisoformat, "time": datetime.time.fromisoformat,
        "timedelta": lambda s: datetime.timedelta(seconds=s), "uuid": uuid.UUID,
        "bytes": base64.b64decode,
    }
    out = []
    for value in values or []:
        if isinstance(value, dict):
            (kind, raw), = value.items()
            out.append(decoders[kind](raw))
        else:
            out.append(value)
    return out


# -- reading -------------------------------------------------------------------------


def find(connection, name):
    if not tables_exist(connection):
        return None
    return _objects(connection).filter(name=name).first()


def get(connection, name):
    row = find(connection, name)
    if row is None:
        known = [r.name for r in all_rows(connection)]
        raise UnknownBackgroundMigration(
            f"No background migration is named {name!r}. "
            + (f"Known: {', '.join(known)}." if known else "There are none in this database.")
            + " `python manage.py backfills list` shows them.")
    return row


def all_rows(connection, states=None):
    if not tables_exist(connection):
        return []
    rows = _objects(connection).all()
    if states is not None:
        rows = rows.filter(state__in=list(states))
    return list(rows)


def unfinished_filling(connection, table, columns=None, states=UNFINISHED):
    """Unfinished background migrations that fill ``columns`` of ``table`` (any column when None)."""
    found = []
    for row in all_rows(connection, states):
        if row.table_name == table and (columns is None or set(columns) & set(row.columns)):
            found.append(row)
    return found


def snapshot(row):
    """The row as the ``backfills status --json`` object (docs/pages/background-migrations.md#json)."""
    def when(value):
        return value.isoformat() if value else None

    return {
        "name": row.name,
        "state": row.state,
        "table": row.table_name,
        "columns": list(row.columns),
        "kind": row.kind,
        "description": row.description,
        "migration": f"{row.app_label}.{row.migration}" if row.migration else None,
        "rows_done": row.rows_done,
        "rows_total": row.rows_total,
        "progress_percent": row.progress_percent,
        "rows_per_second": round(row.rows_per_second, 1),
        "duty_cycle": round(row.duty_cycle, 3),
        "eta_seconds": row.eta_seconds,
        "batches": row.batches,
        "batch_size": row.batch_size,
        "attempts": row.attempts,
        "retries": row.retries,
        "hold_until": when(row.hold_until),
        "hold_reason": row.hold_reason or None,
        "throttle_reason": row.throttle_reason or None,
        "health": row.health or {},
        "error": row.error or None,
        "runner": row.runner or None,
        "created_at": when(row.created_at),
        "started_at": when(row.started_at),
        "finished_at": when(row.finished_at),
        "updated_at": when(row.updated_at),
    }


def describe_progress(row):
    """'42.0% of ~1,000,000 rows, 5,120 rows/s, ETA 113 s' for messages."""
    total = max(row.rows_total, row.rows_done)
    parts = [f"{row.progress_percent:.1f}% of ~{total:,} rows"]
    if row.rows_per_second:
        parts.append(f"{row.rows_per_second:,.0f} rows/s")
    eta = row.eta_seconds
    parts.append(f"ETA {eta} s" if eta is not None else "ETA unknown (not running)")
    return ", ".join(parts)


# -- changing ------------------------------------------------------------------------


def _send(connection, row, old, reason):
    from ..models import BackgroundMigration
    from ..signals import background_migration_state_changed

    responses = background_migration_state_changed.send_robust(
        sender=BackgroundMigration, name=row.name, old_state=old, new_state=row.state, reason=reason,
        snapshot=snapshot(row), using=connection.alias)
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("background_migration_state_changed receiver %r failed for %s: %r",
                         receiver, row.name, response)


def transition(connection, name, to, *, allowed, reason="", refuse=None, **fields):
    """Move ``name`` to state ``to`` if it is in one of ``allowed`` now; returns the row.

    ``refuse(row)`` builds the message when it is not. The signal is sent
    after the change commits (at once in autocommit).
    """
    with transaction.atomic(using=connection.alias):
        row = _objects(connection).select_for_update().filter(name=name).first()
        if row is None:
            get(connection, name)  # raises with the known names
        if row.state not in allowed:
            raise BackgroundMigrationError(
                refuse(row) if refuse else f"Background migration {name!r} is {row.state}; it cannot become {to}.")
        old = row.state
        row.state = to
        for key, value in fields.items():
            setattr(row, key, value)
        row.save(using=connection.alias)
        transaction.on_commit(lambda: _send(connection, row, old, reason), using=connection.alias)
    return row


def enqueue(connection, *, name, table, columns, kind, spec, description="", label=None):
    """Record a copy for the runner; a re-run of the same expand finds it and leaves it as it is.

    A finalized row of the same name belongs to an earlier, completed copy
    (the same change made again in a later release): it starts over.
    """
    ensure_tables(connection)
    app_label, _, migration = (label or "").partition(".")
    values = dict(table_name=table, columns=list(columns), kind=kind, spec=spec, description=description,
                  app_label=app_label, migration=migration,
                  rows_total=max(catalog.estimated_rows(connection, table), 0))
    row = find(connection, name)
    if row is not None and row.state != FINALIZED:
        return row
    if row is not None:
        _objects(connection).filter(pk=row.pk).delete()
    row = _objects(connection).create(name=name, state=QUEUED, **values)
    transaction.on_commit(lambda: _send(connection, row, None, f"enqueued by {label or 'a migration'}"),
                          using=connection.alias)
    return row


def discard(connection, name, reason="its expand step was reversed"):
    """The copy is no longer wanted (its target column is gone): the row goes."""
    row = find(connection, name)
    if row is None:
        return
    _objects(connection).filter(pk=row.pk).delete()
    old = row.state
    row.state = CANCELLED
    _send(connection, row, old, reason)


def mark_finalized(connection, name, reason):
    """A contract step that needed this copy has passed its gate."""
    row = find(connection, name)
    if row is None or row.state == FINALIZED:
        return row
    return transition(connection, name, FINALIZED, allowed=(FINISHED,), reason=reason)


def _not_from(action, allowed):
    def refuse(row):
        hint = {
            FINISHED: f"it has finished: nothing to {action}. `backfills finalize {row.name}` marks it finalized.",
            FINALIZED: f"it is finalized: nothing to {action}.",
            FAILED: f"it failed ({row.error.splitlines()[0] if row.error else 'see status'}); "
                    f"`backfills retry {row.name}` queues it again once the cause is fixed.",
            CANCELLED: f"it was cancelled; `backfills retry {row.name}` queues it again.",
            PAUSED: f"it is already paused; `backfills resume {row.name}` lets it run.",
        }.get(row.state, f"{action} applies only to a migration that is {' or '.join(allowed)}.")
        return f"Cannot {action} background migration {row.name!r}: it is {row.state}, and {hint}"
    return refuse


def pause(connection, name, reason="paused by hand"):
    allowed = (QUEUED, RUNNING, ON_HOLD)
    return transition(connection, name, PAUSED, allowed=allowed, reason=reason, refuse=_not_from("pause", allowed),
                      runner="", lease_until=None)


def resume(connection, name, reason="resumed by hand"):
    allowed = (PAUSED,)
    return transition(connection, name, QUEUED, allowed=allowed, reason=reason,
                      refuse=_not_from("resume", allowed), hold_until=None, hold_reason="")


def retry(connection, name, reason="retried by hand"):
    allowed = (FAILED, CANCELLED)
    return transition(connection, name, QUEUED, allowed=allowed, reason=reason, refuse=_not_from("retry", allowed),
                      error="", attempts=0, runner="", lease_until=None)


def cancel(connection, name, reason="cancelled by hand"):
    allowed = (QUEUED, RUNNING, PAUSED, ON_HOLD, FAILED)
    return transition(connection, name, CANCELLED, allowed=allowed, reason=reason,
                      refuse=_not_from("cancel", allowed), runner="", lease_until=None)


def finished_progress(connection, row):
    """True when the copy's cursor says every batch is done."""
    progress = progress_of(connection, row.name)
    return bool(progress and progress["done"])


def now():
    return timezone.now()
