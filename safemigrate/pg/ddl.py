"""The one place that waits for locks.

PostgreSQL queues lock requests: an ``ALTER TABLE`` waiting for ACCESS
EXCLUSIVE behind a 30-second report blocks every query that arrives after
it, even plain SELECTs. So no statement here waits long. Each lock-taking
statement runs in its own short transaction with ``SET LOCAL lock_timeout``
(``set_config(..., true)``, which PgBouncer's transaction pooling tolerates);
when the timeout fires the transaction is rolled back, the queue behind it
drains, and the statement is retried after an exponential backoff with
jitter. After the last attempt the error names the sessions holding locks on
the table, so the operator knows whom to wait for or stop.

Steps that only take SHARE UPDATE EXCLUSIVE (CREATE INDEX CONCURRENTLY,
VALIDATE CONSTRAINT) do not block reads or writes, so they run without a
lock or statement timeout: a timeout there would only throw away work.

Migration runs are serialized by the run lock in ``safemigrate.pg.runlock``,
so two deploy jobs never interleave DDL.
"""

import contextlib
import contextvars
import random
import time

from django.db import OperationalError, transaction

from ..conf import conf
from ..exceptions import LockTimeoutExhausted, SafeMigrateError
from . import privileges, windows
from .session import is_direct

LOCK_NOT_AVAILABLE = "55P03"


def sqlstate(exc):
    """The SQLSTATE of a database error raised through Django, or None."""
    cause = exc
    while cause is not None:
        code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if code:
            return code
        cause = cause.__cause__
    return None


def backoff_seconds(attempt, *, base_ms=None, max_ms=None, jitter=None, rng=random):
    """Delay before retry number ``attempt`` (0-based), jittered."""
    base_ms = conf.retry_backoff_base_ms if base_ms is None else base_ms
    max_ms = conf.retry_backoff_max_ms if max_ms is None else max_ms
    jitter = conf.retry_jitter if jitter is None else jitter
    delay = min(max_ms, base_ms * (2**attempt))
    return delay * rng.uniform(1 - jitter, 1 + jitter) / 1000.0


def _normalize(statements):
    for statement in statements:
        if isinstance(statement, str):
            yield statement, None
        else:
            yield statement


# -- run state, set by pg.execution while it applies a migration --------------

#: The migration run in progress (``pg.execution``); None outside one.
_run = contextvars.ContextVar("safemigrate_migration_run", default=None)
_declared = contextvars.ContextVar("safemigrate_declared_statements", default=False)


@contextlib.contextmanager
def migration_run(run):
    """Make ``run`` the migration run in progress for the duration of the block."""
    token = _run.set(run)
    try:
        yield run
    finally:
        _run.reset(token)


def current_run():
    """The migration run in progress (``pg.execution.MigrationRun``), or None."""
    return _run.get()


@contextlib.contextmanager
def declared_statements():
    """Mark the statements sent in this block as safemigrate's own, declared ones.

    Their locks are planned (``pg.statements``): their SQL can look like the
    risky kind (``SET NOT NULL`` after a validated CHECK, an in-place
    ``TYPE`` change) without doing the long work, so the execution path
    neither reports them as "not made safe" nor replaces their timeouts.
    """
    token = _declared.set(True)
    try:
        yield
    finally:
        _declared.reset(token)


def sending_declared_statements():
    """True inside ``declared_statements()``."""
    return _declared.get()


def current_migration():
    """``(label, stage)`` of the migration being applied through ``pg.execution`` (None outside one)."""
    run = _run.get()
    return None if run is None else (run.label, getattr(run, "stage", None))


def owns_lock_retries(connection):
    """True when a lock timeout inside the current transaction is retried by re-applying the migration.

    ``run_ddl`` then lets the error through instead of retrying in a
    savepoint, which would keep the locks taken earlier in the migration.
    """
    run = _run.get()
    return run is not None and run.atomic and run.connection is connection and connection.in_atomic_block


def lock_holders(connection, table):
    """Sessions other than ours holding a lock on ``table`` (list of dicts)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT a.pid, a.state, l.mode,
                   extract(epoch FROM now() - a.xact_start)::float AS xact_seconds,
                   left(a.query, 200) AS query
              FROM pg_locks l
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.relation = to_regclass(%s)
               AND l.granted
               AND a.pid <> pg_backend_pid()
             ORDER BY xact_seconds DESC NULLS LAST
            """,
            [connection.ops.quote_name(table)],
        )
        columns = [col[0] for col in cursor.description]
        holders = [dict(zip(columns, row)) for row in cursor.fetchall()]
    privileges.note_hidden_sessions(connection, holders)  # hook: without pg_read_all_stats, say so once
    return holders


def describe_holders(holders):
    if not holders:
        return "no session held a lock on it when the last attempt ended"
    lines = []
    for holder in holders[:5]:
        if privileges.hidden(holder):
            lines.append(privileges.describe_hidden(holder))
            continue
        age = holder["xact_seconds"]
        age_text = f"in a transaction for {age:.1f}s" if age is not None else "idle"
        lines.append(
            f"pid {holder['pid']} ({holder['state']}, {holder['mode']}, {age_text}): "
            f"{holder['query']!r}"
        )
    return "; ".join(lines)


def _set_timeouts(cursor, lock_timeout_ms, statement_timeout_ms, local):
    is_local = "true" if local else "false"
    cursor.execute(
        f"SELECT set_config('lock_timeout', %s, {is_local}), "
        f"set_config('statement_timeout', %s, {is_local})",
        [f"{int(lock_timeout_ms)}ms", f"{int(statement_timeout_ms or 0)}ms"],
    )


def run_ddl(
    schema_editor,
    statements,
    *,
    table,
    record=None,
    lock_timeout_ms=None,
    retries=None,
    statement_timeout_ms=None,
    sleep=time.sleep,
):
    """Run ``statements`` in one short transaction with bounded lock waits.

    ``statements`` is a list of SQL strings or ``(sql, params)`` pairs that
    together take a table lock; they commit together or not at all. On lock
    timeout the attempt is rolled back and retried; ``record.lock_retries``
    counts the retries. Inside an atomic migration the attempt uses a
    savepoint instead (the lock is then held until that migration commits,
    which is why safemigrate's generated migrations are non-atomic).
    """
    statements = list(_normalize(statements))
    lock_timeout_ms = conf.lock_timeout_ms if lock_timeout_ms is None else lock_timeout_ms
    retries = conf.lock_retries if retries is None else retries
    if statement_timeout_ms is None:
        statement_timeout_ms = conf.statement_timeout_ms
    if getattr(schema_editor, "collect_sql", False):
        schema_editor.collected_sql.append(
            f"-- safemigrate: in its own transaction with lock_timeout = {lock_timeout_ms}ms, "
            f"retried up to {retries} times"
        )
        for sql, params in statements:
            schema_editor.collected_sql.append(_render(schema_editor, sql, params) + ";")
        return
    connection = schema_editor.connection
    nested = connection.in_atomic_block
    holders = []
    for attempt in range(retries + 1):
        try:
            with transaction.atomic(using=connection.alias), declared_statements():
                with connection.cursor() as cursor:
                    if nested:
                        cursor.execute("SHOW lock_timeout")
                        saved_lock = cursor.fetchone()[0]
                        cursor.execute("SHOW statement_timeout")
                        saved_statement = cursor.fetchone()[0]
                    _set_timeouts(cursor, lock_timeout_ms, statement_timeout_ms, local=True)
                    for sql, params in statements:
                        # issue 23: DDL on a rename window's table runs on its base table
                        windows.execute_statement(connection, cursor.execute, sql, params)
                    if nested:
                        cursor.execute(
                            "SELECT set_config('lock_timeout', %s, true), "
                            "set_config('statement_timeout', %s, true)",
                            [saved_lock, saved_statement],
                        )
            return
        except OperationalError as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            if nested and owns_lock_retries(connection):
                raise  # issue 10: the whole atomic migration is rolled back and retried instead
            holders = lock_holders(connection, table)
            if attempt == retries:
                break
            if record is not None:
                record.lock_retries += 1
            sleep(backoff_seconds(attempt))
    raise LockTimeoutExhausted(
        f"Could not lock table {table!r} within {lock_timeout_ms} ms in {retries + 1} attempts. "
        f"Waiting longer would stall every query on that table behind the migration. "
        f"Lock holders: {describe_holders(holders)}. "
        f"Nothing was changed by this step; run the migration again once those transactions "
        f"end, or raise SAFEMIGRATE['LOCK_RETRIES'] to keep trying longer.",
        table=table,
        attempts=retries + 1,
        blockers=holders,
    )


class SessionSettingRefused(SafeMigrateError):
    """A long statement needs session-level settings on a connection that goes through a proxy."""


def run_unbounded(schema_editor, sql, params=None):
    """Run a long, non-blocking statement (CONCURRENTLY, VALIDATE) outside a transaction.

    It must run without lock or statement timeout: a server-, database- or
    role-wide ``statement_timeout`` would kill a long index build and leave an
    INVALID index behind. Outside a transaction that can only be arranged
    with a session-level setting, which a transaction-mode pooler would leave
    on a shared server connection. So nothing is set when both timeouts are
    already 0 (PostgreSQL's default); otherwise they are switched off and
    restored only on a direct connection, and refused through a proxy.
    """
    if getattr(schema_editor, "collect_sql", False):
        schema_editor.collected_sql.append(
            "-- safemigrate: outside a transaction, no lock or statement timeout"
        )
        schema_editor.collected_sql.append(_render(schema_editor, sql, params) + ";")
        return
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            _set_timeouts(cursor, 0, 0, local=True)
            windows.execute_statement(connection, cursor.execute, sql, params)
            return
        # transaction_timeout (PostgreSQL 17+) also cancels a long concurrent
        # build: each of its internal transactions counts.
        cursor.execute(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
            "current_setting('transaction_timeout', true)"
        )
        saved = dict(zip(UNBOUNDED_TIMEOUTS, cursor.fetchone()))
        active = {name: value for name, value in saved.items() if value not in (None, "0")}
        if not active:
            windows.execute_statement(connection, cursor.execute, sql, params)
            return
        if not is_direct(connection):
            shown = ", ".join(f"{name} = {value}" for name, value in active.items())
            raise SessionSettingRefused(
                f"This connection has {shown} (set before the migration started, e.g. by the "
                f"server, database or role configuration), and {sql[:80]!r} must run without it: "
                f"a timeout cancels a long build or validation halfway and throws the work away. "
                f"Outside a transaction it can only be switched off for the session, and this "
                f"connection goes through a proxy or pooler, where a session setting would stay "
                f"on a shared server connection. Run migrations over a direct connection (or a "
                f"session-mode pool), or give the migration role no timeouts, e.g. "
                f"ALTER ROLE <role> SET statement_timeout = 0."
            )
        _set_session(cursor, {name: "0" for name in active})
        try:
            windows.execute_statement(connection, cursor.execute, sql, params)
        finally:
            _set_session(cursor, {name: saved[name] for name in active})


UNBOUNDED_TIMEOUTS = ("lock_timeout", "statement_timeout", "transaction_timeout")


def _set_session(cursor, values):
    for name, value in values.items():
        cursor.execute("SELECT set_config(%s, %s, false)", [name, value])


def _render(schema_editor, sql, params):
    if not params:
        return sql
    return sql % tuple(schema_editor.quote_value(p) for p in params)
