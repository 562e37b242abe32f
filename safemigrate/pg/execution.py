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
lock it took — and applied again after the backoff. Nothing is recorded in
``django_migrations`` before the transaction commits, so applying it again is
exact. ``run_ddl`` inside such a migration does not retry on its own
(``owns_lock_retries``): a savepoint retry would keep the earlier tables
locked while it waits. A lock on a second table, requested while the
transaction holds one that blocks traffic on the first, waits only briefly,
and the retried attempt takes it first (``pg.lock_order``): the first
table's traffic never waits a whole ``lock_timeout`` for the second's.

Non-atomic migration. Each lock-taking statement that arrives outside a
transaction (Django's operations, ``RunSQL``) runs in a short transaction of
its own with ``lock_timeout`` and is retried alone; statements inside
safemigrate's own short transactions keep their own retry loop. Plain
Django SQL with a lock-friendly equivalent is rewritten
(``safemigrate.pg.rewrite``), unless ``SAFEMIGRATE["REWRITE_PLAIN_OPERATIONS"]``
turns that off for the app.

Index builds of an atomic migration (a plain ``CREATE INDEX``, ``ADD
CONSTRAINT ... UNIQUE``) are built CONCURRENTLY before its transaction when
the rest of the migration allows it (``safemigrate.pg.prebuild``,
``SAFEMIGRATE["ATOMIC_INDEX_BUILDS"]``); in the transaction the build is then
skipped, a unique constraint attached ``USING INDEX``.

Whatever still holds a lock for real work (an index build the rest of its
atomic migration keeps inside, a type change that rewrites, raw SQL) runs
lock-bounded and is reported, one line per statement, as "not made safe".
"""

import time
from dataclasses import dataclass, field

from django.db import DatabaseError, OperationalError, transaction

from ..conf import conf
from ..exceptions import LockTimeoutExhausted
from ..stages import migration_stage
from . import archive, catalog, partition_tree, partitions, prebuild, rewrite, sql, windows
from .lock_order import LockOrder
from .classify import classify
from .ddl import (
    LOCK_NOT_AVAILABLE,
    backoff_seconds,
    describe_holders,
    lock_holders,
    migration_run,
    run_unbounded,
    sending_declared_statements,
    sqlstate,
)
from .locks import Lock
from .reporting import current_report
from .statements import DeclaredSQL, How

#: How a statement runs, as ``--plan --annotate`` says it: with lock_timeout and retries,
#: replaced by its lock-friendly equivalent, or without a lock timeout (its lock
#: blocks neither reads nor writes).
BOUNDED = "bounded"
REWRITTEN = "rewritten"
UNBOUNDED = "unbounded"


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
    #: Index builds of this atomic migration done before its transaction (``pg.prebuild``).
    prebuilt: "prebuild.PrebuildPlan | None" = None
    #: The migration's stage (a background copy is enqueued only from an expand migration).
    stage: object = None
    #: The lock order learned by earlier attempts of this (atomic) migration.
    order: LockOrder = field(default_factory=LockOrder)
    _inside: bool = False

    def __call__(self, execute, sql, params, many, context):
        if self._inside or many or not isinstance(sql, str) or self.connection.vendor != "postgresql":
            return execute(sql, params, many, context)
        if self.prebuilt is not None and self.connection.in_atomic_block:
            done = self.prebuilt.claim(sql, self._unique_name)
            if done is not None:
                if done.replacement is None:
                    return None  # the index exists: built before the transaction
                sql, params = done.replacement, None
        execute = windows.executor(self.connection, execute)  # issue 23: DDL on a rename window's table
        info = classify(sql)
        if info.creates_table:
            self.new_tables.add(info.creates_table)
        in_transaction = self.connection.in_atomic_block
        owned = sending_declared_statements()
        new_table = bool(info.table) and info.table in self.new_tables
        if not in_transaction and self.rewrite and not new_table:
            steps = rewrite.plan(sql, params, unique_name=self._unique_name)
            if steps is not None:
                return self._run_rewritten(steps, sql)
        if not info.takes_lock or not info.in_transaction:
            return execute(sql, params, many, context)
        after = None if owned else (lambda: self._notice_if_blocking(info, sql))
        if in_transaction:
            ordered = self.atomic and info.table and info.table not in self.new_tables
            self._inside = True
            try:
                if not owned:  # safemigrate's own steps set their (possibly per-operation) timeout
                    _ensure_lock_timeout(self.connection)
                if self.atomic and not self.order.started:
                    if self.order.locks_first():
                        _ensure_lock_timeout(self.connection)
                    self._take_first(lambda: self.order.start(self.connection, self.new_tables))
                if ordered:
                    self._take_first(lambda: self.order.acquire(self.connection, info.table, info.lock,
                                                                self.new_tables))
            finally:
                self._inside = False
            try:
                result = execute(sql, params, many, context)
            except OperationalError as exc:
                if sqlstate(exc) == LOCK_NOT_AVAILABLE:
                    self.failed_table = info.table
                    if self.atomic:
                        self.order.failed(info.table, info.lock)
                raise
            if ordered:
                self.order.granted(info.table, info.lock)
            if after:
                after()
            return result
        return self._run_alone(lambda: execute(sql, params, many, context), info.table, after=after,
                               lock=info.lock)

    def _take_first(self, take):
        """Run a ``pg.lock_order`` step; a lock it did not get fails the attempt like any lock timeout."""
        try:
            take()
        except OperationalError as exc:
            if sqlstate(exc) == LOCK_NOT_AVAILABLE and self.order.pending:
                self.failed_table = self.order.pending[0]
                self.order.failed(*self.order.pending)
            raise

    # -- statements outside a transaction ------------------------------------------------

    def _run_alone(self, run, table, after=None, lock=Lock.ACCESS_EXCLUSIVE):
        """Run one lock-taking statement in its own short transaction, retried on lock timeout.

        ``after`` runs in the same transaction once the statement succeeded. A
        partitioned ``table`` is locked whole first, in the statement's mode
        (``lock``, as classified), so the statement never holds the parent while
        it waits for one partition (``pg.partition_tree.tree_lock``).
        """
        retries = conf.lock_retries
        holders = []
        for attempt in range(retries + 1):
            try:
                self._inside = True
                with transaction.atomic(using=self.connection.alias):
                    _ensure_lock_timeout(self.connection, force=True)
                    partition_tree.lock_tree(self.connection, table, lock)  # issue 24: the whole tree first
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
            steps = partitions.adapt_rewrite(self.connection, steps)  # hook: issue 24, partitioned tables
            for step in steps:
                report.warning(f"  -> {_short(step.sql)}")
                if step.kind == partitions.PARTITIONED:
                    step.run(self.connection)
                elif step.kind == rewrite.CONCURRENT:
                    self._run_concurrent(step)
                elif step.constraint and catalog.constraint_state(self.connection, *step.constraint):
                    report.warning("     (done by an earlier, interrupted run)")
                else:
                    info = classify(step.sql)

                    def run(step=step):
                        with self.connection.cursor() as cursor:
                            cursor.execute(step.sql, step.params)

                    self._run_alone(run, info.table, lock=info.lock)
                    self._inside = True
        finally:
            self._inside = False
        return None

    def _run_concurrent(self, step):
        """CONCURRENTLY / VALIDATE through ``run_unbounded`` (no timeouts, pooler rules); clean up a failed build."""
        editor = _Runner(self.connection)
        if step.index and _index_validity(self.connection, step.index) is False:
            run_unbounded(editor, sql.drop_index_concurrently(step.index).sql)
        if step.index and _index_validity(self.connection, step.index):
            return  # built by an earlier, interrupted run
        try:
            run_unbounded(editor, step.sql, step.params)
        except DatabaseError:
            if step.index and _index_validity(self.connection, step.index) is False:
                run_unbounded(editor, sql.drop_index_concurrently(step.index).sql)
            raise

    def _has_rows(self, table):
        self._inside = True
        try:
            with transaction.atomic(using=self.connection.alias):
                return catalog.has_rows(self.connection, table)
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
        if not info.work or (info.table and info.table in self.new_tables):
            return
        if info.table and not self._has_rows(info.table):
            return
        rewritable = self.rewrite and rewrite.plan(sql, None, unique_name=lambda t, c: "x") is not None
        why = "no lock-friendly equivalent is known"
        if self.atomic and rewritable:
            kept = self.prebuilt.reason(sql) if self.prebuilt is not None else None
            why = (f"the migration is atomic and {kept}; set atomic = False to let safemigrate rewrite it"
                   if kept else "the migration is atomic: set atomic = False to let safemigrate rewrite it")
        line = (f"{self.label}: not made safe ({why}): {_short(sql)} -- takes {info.lock.pg_name} and "
                f"{info.work} while {info.lock.blocks} wait; the lock request itself is bounded by lock_timeout")
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
    needs = any(getattr(op, "reverse_requires_non_atomic", False) for op in operations)
    return needs and all(callable(getattr(op, "forwards_plan", None)) for op in operations)


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
    report = current_report()
    plan = None
    if atomic and not connection.in_atomic_block and conf.prebuilds_indexes(migration.app_label):
        plan = prebuild.plan_migration(connection, state, migration, backwards)
        if plan is not None:
            prebuild.build_all(connection, plan, report, label)
    try:
        result = _apply_bounded(call, connection, state, migration, kwargs, atomic, label, plan, sleep, backwards)
    except BaseException:
        if plan is not None:
            prebuild.discard(connection, plan, report, label)
        raise
    if plan is not None:
        # A build the transaction never asked for (its statement read differently
        # at run time) is not part of what the migration describes.
        prebuild.discard(connection, plan, report, label, unclaimed_only=True)
    return result


def _apply_bounded(call, connection, state, migration, kwargs, atomic, label, plan, sleep, backwards):
    """The migration through the wrapper; an atomic one is rolled back whole and retried on lock timeout."""
    retries = conf.lock_retries
    report = current_report()
    order = LockOrder()
    for attempt in range(retries + 1):
        order.new_attempt()
        run = MigrationRun(connection, label, migration.app_label, atomic,
                           rewrite=conf.rewrites_plain_operations(migration.app_label), sleep=sleep,
                           stage=None if backwards else migration_stage(migration),
                           prebuilt=plan, order=order)
        if plan is not None:
            for build in plan.builds:
                build.claimed = False  # a retried transaction meets every statement again
        try:
            with migration_run(run), connection.execute_wrapper(run), windows.resolving_introspection(connection):
                return call(state.clone() if atomic else state, migration, **kwargs)
        except OperationalError as exc:
            if not atomic or sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            table = run.failed_table
            holders = lock_holders(connection, table) if table else []
            if attempt == retries:
                raise _exhausted(table, retries + 1, holders, "migration") from exc
            delay = backoff_seconds(attempt)
            wait = order.failed_wait_ms if order.failed_wait_ms is not None else conf.lock_timeout_ms
            first = order.contended[0] if order.contended else None
            then = "; that lock is taken first next time" if first and first.table == table and first.first else ""
            report.warning(
                f"{label}: lock on {table or 'a table'} not granted within {wait} ms; "
                f"the whole migration was rolled back (releasing its locks) and is applied again in "
                f"{delay * 1000:.0f} ms (retry {attempt + 1} of {retries}){then}"
            )
            sleep(delay)


def _non_atomic_copy(migration):
    clone = migration.__class__(migration.name, migration.app_label)
    clone.__dict__.update(migration.__dict__)
    clone.atomic = False
    return clone


class BoundedExecutorMixin:
    """Mix into ``MigrationExecutor``: every migration runs through ``run_migration``."""

    def apply_migration(self, state, migration, fake=False, fake_initial=False):
        state = run_migration(super().apply_migration, self.connection, state, migration, backwards=False,
                              fake=fake, fake_initial=fake_initial)
        archive.finish_pending(self.connection)  # hook: checksum / copy what the migration archived
        return state

    def unapply_migration(self, state, migration, fake=False):
        state = run_migration(super().unapply_migration, self.connection, state, migration, backwards=True,
                              fake=fake)
        archive.finish_pending(self.connection)  # hook: checksum / copy what the migration archived
        return state


def describe_statement_lock(sql, *, atomic=True, rewrite_enabled=True):
    """``(lock, disposition)`` of one undeclared statement as ``migrate`` would run it.

    ``disposition`` is ``"rewritten"`` (replaced by its lock-friendly
    equivalent), ``"bounded"`` (runs with lock_timeout and retries) or
    ``"unbounded"`` (runs without a lock timeout because its lock does not
    block reads or writes: CONCURRENTLY, VALIDATE, plain reads and row writes).
    """
    info = classify(sql)
    if not atomic and rewrite_enabled and rewrite.plan(sql, None, unique_name=lambda t, c: f"{t}_{c}_uniq"):
        return info.describe(), REWRITTEN
    if not info.takes_lock or not info.in_transaction:
        return info.describe(), UNBOUNDED
    return info.describe(), BOUNDED


def describe_declared(statement):
    """``(lock, disposition, not made safe)`` of a statement safemigrate declared (``pg.statements``)."""
    disposition = BOUNDED if statement.how is How.BOUNDED else UNBOUNDED
    unsafe = None
    if statement.how is How.UNBOUNDED and statement.work:
        unsafe = f"{statement.work}; accepted because it is {statement.reason}"
    return statement.describe(), disposition, unsafe


def annotate_plan(loader, plan):
    """Per-statement lines for ``migrate --plan --annotate``: the lock and how it runs.

    ``plan`` is a list of ``(migration, backwards)`` pairs. Each SQL statement
    the migration would run is listed with its strongest lock and
    ``bounded`` / ``rewritten`` / ``unbounded``. Statements safemigrate's
    operations declared (``pg.statements``) are described from their
    declaration; the rest (Django's operations, ``RunSQL``) from their text
    (``pg.classify``). Statements that would still hold a lock through real
    work are marked ``NOT MADE SAFE`` with the reason, including "atomic"
    when ``atomic = False`` would let safemigrate rewrite them.
    """
    lines = []
    tracker = windows.PlanTracker(getattr(loader, "connection", None))  # issue 23: rename windows
    for migration, backwards in plan:
        atomic = bool(migration.atomic)
        rewrite_enabled = conf.rewrites_plain_operations(migration.app_label)
        lines.append(f"{migration.app_label}.{migration.name}{' (backwards)' if backwards else ''}"
                     f"{'' if atomic else ' (non-atomic)'}")
        new_tables = set()
        statements = loader.collect_sql([(migration, backwards)])
        prebuilt = _annotate_prebuilds(loader.connection, statements) if (
            atomic and conf.prebuilds_indexes(migration.app_label)) else None
        for statement in statements:
            if isinstance(statement, DeclaredSQL):
                lock, disposition, unsafe = describe_declared(statement.statement)
                line = f"    {_short(statement, 120)}  [{lock}; {disposition}]"
                line += f"  NOT MADE SAFE ({unsafe})" if unsafe else ""
                lines.append(_with_window_note(line, tracker, statement))
                continue
            if not statement.strip() or statement.lstrip().startswith("--"):
                continue
            lock, disposition = describe_statement_lock(statement, atomic=atomic, rewrite_enabled=rewrite_enabled)
            info = classify(statement)
            if info.creates_table:
                new_tables.add(info.creates_table)
            build = prebuilt.claim(statement, lambda t, c: f"{t}_{c}_uniq") if prebuilt else None
            if build is not None:
                lines.append(f"    {_short(statement, 120)}  [{lock}; {PREBUILT}]")
                lines.append(f"      before the transaction: {_short(build.build, 110)}")
                if build.replacement:
                    lines.append(f"      in the transaction: {_short(build.replacement, 110)}")
                continue
            line = f"    {_short(statement, 120)}  [{lock}; {disposition}]"
            if disposition == BOUNDED and info.work and info.table not in new_tables:
                kept = prebuilt.reason(statement) if prebuilt else None
                why = "atomic migration: set atomic = False to rewrite it" if (
                    atomic and rewrite_enabled and rewrite.plan(statement, None, unique_name=lambda t, c: "x")
                ) else "no lock-friendly equivalent"
                if kept and why.startswith("atomic"):
                    why = f"atomic migration and {kept}: set atomic = False to rewrite it"
                line += f"  NOT MADE SAFE ({why}): {info.work}"
            lines.append(_with_window_note(line, tracker, statement))
    return lines


def _with_window_note(line, tracker, statement):
    """``line`` plus how ``statement`` meets a rename window (issue 23), declared or not."""
    note = tracker.note(statement)
    return f"{line}  [{note}]" if note else line


#: The disposition of an atomic migration's index build moved before its transaction.
PREBUILT = "built concurrently before the transaction"


def _annotate_prebuilds(connection, statements):
    """What ``migrate`` would build before an atomic migration's transaction (planned from its SQL)."""
    plan = prebuild.plan_statements(statements, prebuild.table_checker(connection), lambda t, c: f"{t}_{c}_uniq")
    for build in plan.builds:
        build.ready = True
    return plan
