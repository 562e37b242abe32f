"""One execution path for every statement ``migrate`` and ``migrate_contract`` run.

safemigrate's own operations bound their locks through ``pg.ddl.run_ddl``.
Everything else a migration sends — Django's operations, ``RunSQL``, third-
party apps, migrations written before safemigrate was installed, and every
rollback — passes through ``BoundedExecutorMixin``, which wraps Django's
``MigrationExecutor.apply_migration`` / ``unapply_migration`` and installs
``connection.execute_wrapper`` for the duration of one migration. The unit
of work is the executor's apply of one migration:

Atomic migration (Django's default). Every lock-taking statement runs after
``set_config('lock_timeout', …, true)`` (transaction-local, so PgBouncer's
transaction pooling is safe). When a lock is not granted in time
(SQLSTATE 55P03) the WHOLE migration is rolled back — which releases every
lock it took, so no table stays locked while another one is waited for —
and applied again after the backoff. Nothing is recorded in
``django_migrations`` before the transaction commits, so applying it again is
exact. ``run_ddl`` inside such a migration does not retry on its own
(``owns_lock_retries``): a savepoint retry would keep the earlier tables
locked while it waits.

Non-atomic migration. Each lock-taking statement that arrives outside a
transaction (Django's operations, ``RunSQL``) runs in a short transaction of
its own with ``lock_timeout`` and is retried alone; statements inside
safemigrate's own short transactions keep their own retry loop. Plain
Django SQL with a lock-friendly equivalent is rewritten
(``safemigrate.pg.rewrite``), unless ``SAFEMIGRATE["REWRITE_PLAIN_OPERATIONS"]``
turns that off for the app.

Whatever still holds a lock for real work (an index build in an atomic
migration, a type change that rewrites, raw SQL) runs lock-bounded and is
reported, one line per statement, as "not made safe".
"""

import time
from dataclasses import dataclass, field

from django.db import DatabaseError, OperationalError, transaction

from ..conf import conf
from ..exceptions import LockTimeoutExhausted
from . import catalog, rewrite
from .ddl import (  # noqa: F401  (owned_statements, owns_lock_retries: re-exported; the run state lives in ddl)
    _current,
    _owned,
    owned_statements,
    owns_lock_retries,
    LOCK_NOT_AVAILABLE,
    backoff_seconds,
    describe_holders,
    lock_holders,
    run_unbounded,
    sqlstate,
)
from .reporting import current_report
from .statements import BOUNDED, REWRITTEN, UNBOUNDED, statement_lock


#: Operation classes whose reverse must run outside a transaction (it backfills
#: or validates in steps that each commit). Operations may also say so with a
#: ``reverse_requires_non_atomic = True`` attribute.
REVERSE_NON_ATOMIC = {"FinishRenameViaCopy"}


@dataclass
class MigrationRun:
    """Book-keeping for one migration applied (or unapplied) through the wrapper."""

    connection: object
    label: str
    app_label: str
    atomic: bool
    rewrite: bool
    sleep: object = time.sleep
    new_tables: set = field(default_factory=set)
    notices: list = field(default_factory=list)
    lock_retries: int = 0
    failed_table: "str | None" = None
    _inside: bool = False

    def __call__(self, execute, sql, params, many, context):
        if self._inside or many or not isinstance(sql, str) or self.connection.vendor != "postgresql":
            return execute(sql, params, many, context)
        info = statement_lock(sql)
        if info.table and info.lock.startswith("ACCESS EXCLUSIVE on the new table"):
            self.new_tables.add(info.table)
        in_transaction = self.connection.in_atomic_block
        owned = _owned.get()
        new_table = bool(info.table) and info.table in self.new_tables
        if not in_transaction and self.rewrite and not new_table:
            steps = rewrite.plan(sql, params, unique_name=self._unique_name)
            if steps is not None:
                return self._run_rewritten(steps, sql)
        if not info.takes_lock or not info.in_transaction:
            return execute(sql, params, many, context)
        after = None if owned else (lambda: self._notice_if_blocking(info, sql))
        if in_transaction:
            if not owned:  # safemigrate's own steps set their (possibly per-operation) timeout
                self._inside = True
                try:
                    _ensure_lock_timeout(self.connection)
                finally:
                    self._inside = False
            try:
                result = execute(sql, params, many, context)
            except OperationalError as exc:
                if sqlstate(exc) == LOCK_NOT_AVAILABLE:
                    self.failed_table = info.table
                raise
            if after:
                after()
            return result
        return self._run_alone(lambda: execute(sql, params, many, context), info.table, after=after)

    # -- statements outside a transaction ------------------------------------------------

    def _run_alone(self, run, table, after=None):
        """Run one lock-taking statement in its own short transaction, retried on lock timeout.

        ``after`` runs in the same transaction once the statement succeeded.
        """
        retries = conf.lock_retries
        holders = []
        for attempt in range(retries + 1):
            try:
                self._inside = True
                with transaction.atomic(using=self.connection.alias):
                    _ensure_lock_timeout(self.connection, force=True)
                    self._inside = False
                    result = run()
                    if after:
                        after()
                    return result
            except OperationalError as exc:
                if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                    raise
                holders = lock_holders(self.connection, table) if table else []
                if attempt == retries:
                    break
                self.lock_retries += 1
                delay = backoff_seconds(attempt)
                current_report().warning(
                    f"{self.label}: lock on {table or 'a table'} not granted within {conf.lock_timeout_ms} ms; "
                    f"statement rolled back, retried alone in {delay * 1000:.0f} ms (retry {attempt + 1} of {retries})")
                self.sleep(delay)
            finally:
                self._inside = False
        raise _exhausted(table, retries + 1, holders, "statement")

    def _run_rewritten(self, steps, original):
        report = current_report()
        report.warning(f"{self.label}: rewritten to keep traffic flowing: {_short(original)}")
        self._inside = True
        try:
            for step in steps:
                report.warning(f"  -> {_short(step.sql)}")
                if step.kind == rewrite.CONCURRENT:
                    self._run_concurrent(step)
                else:
                    table = statement_lock(step.sql).table

                    def run(step=step):
                        with self.connection.cursor() as cursor:
                            cursor.execute(step.sql, step.params)

                    self._run_alone(run, table)
                    self._inside = True
        finally:
            self._inside = False
        return None

    def _run_concurrent(self, step):
        """CONCURRENTLY / VALIDATE through ``run_unbounded`` (no timeouts, pooler rules); clean up a failed build."""
        editor = _Runner(self.connection)
        quote = self.connection.ops.quote_name
        if step.index and _index_validity(self.connection, step.index) is False:
            run_unbounded(editor, f"DROP INDEX CONCURRENTLY IF EXISTS {quote(step.index)}")
        if step.index and _index_validity(self.connection, step.index):
            return  # built by an earlier, interrupted run
        try:
            run_unbounded(editor, step.sql, step.params)
        except DatabaseError:
            if step.index and _index_validity(self.connection, step.index) is False:
                run_unbounded(editor, f"DROP INDEX CONCURRENTLY IF EXISTS {quote(step.index)}")
            raise

    def _has_rows(self, table):
        self._inside = True
        try:
            with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
                cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {self.connection.ops.quote_name(table)})")
                return cursor.fetchone()[0]
        except DatabaseError:
            return True  # cannot tell (renamed, other schema): report it
        finally:
            self._inside = False

    def _unique_name(self, table, column):
        with self.connection.schema_editor(collect_sql=True, atomic=False) as editor:
            return editor._create_index_name(table, [column], suffix="_uniq")

    # -- reporting ----------------------------------------------------------------------

    def _notice_if_blocking(self, info, sql):
        """Report a statement that held its lock through real work on a table with rows.

        Runs right after the statement, in its transaction: the lock is held, so
        looking at the table waits for nobody. An empty table (or one created in
        this migration) had no traffic to stall.
        """
        if not info.blocking_work or (info.table and info.table in self.new_tables):
            return
        if info.table and not self._has_rows(info.table):
            return
        rewritable = self.rewrite and rewrite.plan(sql, None, unique_name=lambda t, c: "x") is not None
        why = ("the migration is atomic: set atomic = False to let safemigrate rewrite it"
               if self.atomic and rewritable else "no lock-friendly equivalent is known")
        line = (f"{self.label}: not made safe ({why}): {_short(sql)} -- takes {info.lock} and "
                f"{info.blocking_work}; the lock request itself is bounded by lock_timeout")
        self.notices.append(line)
        current_report().warning(line)


class _Runner:
    """The two attributes ``run_unbounded`` reads from a schema editor."""

    collect_sql = False

    def __init__(self, connection):
        self.connection = connection


def _short(sql, limit=160):
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _index_validity(connection, name):
    """True / False for a valid / invalid index called ``name``; None when there is none."""
    state = catalog.index_state(connection, name)
    return None if state is None else state["valid"]


def _ensure_lock_timeout(connection, force=False):
    """Set the transaction-local lock_timeout unless a shorter one is already in force.

    Without ``force`` an explicit setting made by safemigrate's own steps (a
    per-operation ``lock_timeout_ms``) is respected; 0 ("wait forever") and
    anything longer than the configured timeout are replaced.
    """
    limit = int(conf.lock_timeout_ms)
    with connection.cursor() as cursor:
        if force:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{limit}ms"])
        else:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true) FROM pg_settings "
                "WHERE name = 'lock_timeout' AND setting::bigint NOT BETWEEN 1 AND %s",
                [f"{limit}ms", limit],
            )


def _exhausted(table, attempts, holders, what):
    return LockTimeoutExhausted(
        f"Could not lock table {table!r} within {conf.lock_timeout_ms} ms in {attempts} attempts "
        f"(each time the {what} was rolled back and retried). Waiting longer would stall every query "
        f"on that table behind the migration. Lock holders: {describe_holders(holders)}. "
        f"Nothing of this {what} was kept; run the command again once those transactions end, or raise "
        f"SAFEMIGRATE['LOCK_RETRIES'] to keep trying longer.",
        table=table, attempts=attempts, blockers=holders,
    )


def reverse_needs_autocommit(migration):
    """True when every operation is safemigrate's (idempotent) and one needs its reverse outside a transaction."""
    operations = migration.operations
    needs = any(getattr(op, "reverse_requires_non_atomic", False) or type(op).__name__ in REVERSE_NON_ATOMIC
                for op in operations)
    return needs and all(getattr(op, "lock_level", None) for op in operations)


def run_migration(call, connection, state, migration, *, backwards, sleep=time.sleep, **kwargs):
    """Apply (or unapply) one migration through the bounded execution path."""
    if kwargs.get("fake") or connection.vendor != "postgresql":
        return call(state, migration, **kwargs)
    atomic = bool(migration.atomic) and connection.features.can_rollback_ddl
    if backwards and atomic and reverse_needs_autocommit(migration):
        # Its operations are idempotent, so running the reverse step by step is safe to re-run.
        migration = _non_atomic_copy(migration)
        atomic = False
    label = f"{migration.app_label}.{migration.name}"
    retries = conf.lock_retries
    report = current_report()
    for attempt in range(retries + 1):
        run = MigrationRun(connection, label, migration.app_label, atomic,
                           rewrite=conf.rewrites_plain_operations(migration.app_label), sleep=sleep)
        token = _current.set(run)
        try:
            with connection.execute_wrapper(run):
                return call(state.clone() if atomic else state, migration, **kwargs)
        except OperationalError as exc:
            if not atomic or sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            table = run.failed_table
            holders = lock_holders(connection, table) if table else []
            if attempt == retries:
                raise _exhausted(table, retries + 1, holders, "migration") from exc
            delay = backoff_seconds(attempt)
            report.warning(
                f"{label}: lock on {table or 'a table'} not granted within {conf.lock_timeout_ms} ms; "
                f"the whole migration was rolled back (releasing its locks) and is applied again in "
                f"{delay * 1000:.0f} ms (retry {attempt + 1} of {retries})"
            )
            sleep(delay)
        finally:
            _current.reset(token)


def _non_atomic_copy(migration):
    clone = migration.__class__(migration.name, migration.app_label)
    clone.__dict__.update(migration.__dict__)
    clone.atomic = False
    return clone


class BoundedExecutorMixin:
    """Mix into ``MigrationExecutor``: every migration runs through ``run_migration``."""

    def apply_migration(self, state, migration, fake=False, fake_initial=False):
        return run_migration(super().apply_migration, self.connection, state, migration, backwards=False,
                             fake=fake, fake_initial=fake_initial)

    def unapply_migration(self, state, migration, fake=False):
        return run_migration(super().unapply_migration, self.connection, state, migration, backwards=True,
                             fake=fake)


def describe_statement_lock(sql, *, atomic=True, rewrite_enabled=True):
    """``(lock, disposition)`` of one statement as ``migrate`` would run it.

    ``disposition`` is ``"rewritten"`` (replaced by its lock-friendly
    equivalent), ``"bounded"`` (runs with lock_timeout and retries) or
    ``"unbounded"`` (runs without a lock timeout because its lock does not
    block reads or writes: CONCURRENTLY, VALIDATE, plain reads and row writes).
    """
    info = statement_lock(sql)
    if not atomic and rewrite_enabled and rewrite.plan(sql, None, unique_name=lambda t, c: f"{t}_{c}_uniq"):
        return info.lock, REWRITTEN
    if not info.takes_lock or not info.in_transaction:
        return info.lock, UNBOUNDED
    return info.lock, BOUNDED


def annotate_plan(loader, plan):
    """Per-statement lines for ``migrate --plan --annotate``: the lock and how it runs.

    ``plan`` is a list of ``(migration, backwards)`` pairs. Each SQL statement
    the migration would run is listed with its strongest lock and
    ``bounded`` / ``rewritten`` / ``unbounded``; statements that would still
    hold a lock through real work are marked ``NOT MADE SAFE`` with the
    reason, including "atomic" when ``atomic = False`` would let
    safemigrate rewrite them.
    """
    lines = []
    for migration, backwards in plan:
        atomic = bool(migration.atomic)
        rewrite_enabled = conf.rewrites_plain_operations(migration.app_label)
        lines.append(f"{migration.app_label}.{migration.name}{' (backwards)' if backwards else ''}"
                     f"{'' if atomic else ' (non-atomic)'}")
        new_tables = set()
        for statement in loader.collect_sql([(migration, backwards)]):
            if not statement.strip() or statement.lstrip().startswith("--"):
                continue
            lock, disposition = describe_statement_lock(statement, atomic=atomic, rewrite_enabled=rewrite_enabled)
            info = statement_lock(statement)
            if info.table and info.lock.startswith("ACCESS EXCLUSIVE on the new table"):
                new_tables.add(info.table)
            line = f"    {_short(statement, 120)}  [{lock}; {disposition}]"
            if disposition == BOUNDED and info.blocking_work and info.table not in new_tables:
                why = "atomic migration: set atomic = False to rewrite it" if (
                    atomic and rewrite_enabled and rewrite.plan(statement, None, unique_name=lambda t, c: "x")
                ) else "no lock-friendly equivalent"
                line += f"  NOT MADE SAFE ({why}): {info.blocking_work}"
            lines.append(line)
    return lines
