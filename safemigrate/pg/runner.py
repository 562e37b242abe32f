"""The one runner: executes a plan of declared statements (``pg.statements``).

Operations build their plans with the builders in ``pg.sql`` and hand them
here; nothing else in the package sends DDL. For each item the runner asks
its re-run check first (so a killed run repeats only what is missing), then
runs it the way its ``How`` says:

- ``BOUNDED`` statements and ``Transaction`` groups: one short transaction
  with ``lock_timeout``, retried with backoff (``pg.ddl.run_ddl``); on a
  partitioned table the transaction first locks the parent, then every
  partition ``NOWAIT``, in its strongest declared mode
  (``pg.partition_tree.tree_lock``), so it never holds the parent while it
  waits for one partition;
- ``CONCURRENT``: outside a transaction with no timeouts
  (``pg.ddl.run_unbounded``); an index build first drops an INVALID leftover
  of an earlier failed build, and drops its own half-built index when it
  fails, so no invalid index stays behind to slow every write. On a
  partitioned table, where PostgreSQL refuses CONCURRENTLY, an index build,
  a VALIDATE and an index drop become ``pg.partitions``' partition-by-
  partition sequence (``partitions.run_concurrent``);
- ``Batched``: the keyset batch engine (``pg.backfill``), or, marked
  ``background``, enqueued for ``manage.py backfills run``
  (``pg.background_mode``);
- ``Call``: a Python step that reads and checks (and, on a partitioned
  table, the per-partition sequence of a unique constraint or foreign key:
  ``pg.steps`` plans those as a ``Call`` of ``pg.partitions``).

Each item becomes one line of the run report (``pg.reporting``). Plans may
be generators: an item can then be built after the ones before it ran (a
swap that renames what the builds before it created).

When SQL is only collected (``sqlmigrate``, ``--plan --annotate``) nothing
is asked of the catalog and ``Call`` steps are left out; the collected text
is ``DeclaredSQL``, which still knows its statement. The text sent to the
server is ``DeclaredSQL`` too, so an execute wrapper (``rehearse``'s tracer,
``pg.measure``) reads the declared lock instead of classifying the text.
"""

from django.db import DatabaseError

from ..conf import conf
from . import backfill, background_mode, catalog, partition_tree, partitions
from .ddl import run_ddl, run_unbounded, sqlstate
from .reporting import step
from .schema import collecting
from .statements import Batched, Call, DeclaredSQL, How, Skipped, Statement, Transaction


def run(schema_editor, plan, *, label):
    """Execute ``plan`` (an iterable of plan items) on ``schema_editor``'s connection.

    ``label`` is the heading of the report lines (the operation's
    ``describe()``): the runner never needs the operation itself.
    """
    for item in plan:
        if isinstance(item, Call):
            _call(schema_editor, item, label)
        elif isinstance(item, Batched):
            _batched(schema_editor, item, label)
        elif isinstance(item, Transaction):
            _transaction(schema_editor, item, label)
        elif isinstance(item, Statement) and item.how is How.CONCURRENT:
            _concurrent(schema_editor, item, label)
        elif isinstance(item, Statement):
            _transaction(schema_editor, Transaction(item.label, (item,)), label)
        else:
            raise TypeError(f"not a plan item: {item!r}")


def _holds(check, connection):
    return check is not None and check.holds(connection)


def _collect(schema_editor, comment, statements):
    schema_editor.collected_sql.append(f"-- safemigrate: {comment}")
    for statement in statements:
        schema_editor.collected_sql.append(DeclaredSQL(_render(schema_editor, statement) + ";", statement))


def _render(schema_editor, statement):
    if not statement.params:
        return statement.sql
    return statement.sql % tuple(schema_editor.quote_value(p) for p in statement.params)


def _transaction(schema_editor, item, label):
    if collecting(schema_editor):
        _collect(schema_editor, f"in its own transaction with lock_timeout = {conf.lock_timeout_ms}ms, retried up "
                 f"to {conf.lock_retries} times", item.statements)
        return
    connection = schema_editor.connection
    with step(label, item.label) as record:
        if _holds(item.skip_if, connection):
            record.skipped = True
            return
        statements = [s for s in item.statements if not _holds(s.skip_if, connection)]
        if not statements:
            record.skipped = True
            return
        statements = partition_tree.tree_lock(connection, item.table, max(s.lock for s in statements)) + statements
        try:
            run_ddl(schema_editor, [(DeclaredSQL(s.sql, s), s.params or None) for s in statements], table=item.table,
                    record=record)
        except DatabaseError as exc:
            _handle(item.on_error, exc)
            raise


UNIQUE_VIOLATION = "23505"


def _concurrent(schema_editor, statement, label):
    if collecting(schema_editor):
        _collect(schema_editor, "outside a transaction, no lock or statement timeout", [statement])
        return
    connection = schema_editor.connection
    with step(label, statement.label) as record:
        if _holds(statement.skip_if, connection):
            record.skipped = True
            return
        try:
            if partitions.run_concurrent(schema_editor, statement, record):
                return
        except DatabaseError as exc:
            _handle(statement.on_error, exc)
            raise
        if statement.index:
            state = catalog.index_state(connection, statement.index)
            if state is not None and state["valid"]:
                record.skipped = True
                return
            if state is not None:
                _drop_index(schema_editor, statement.index)
                record.detail = "rebuilt an INVALID index left by an earlier run"
        try:
            run_unbounded(schema_editor, DeclaredSQL(statement.sql, statement), statement.params or None)
        except DatabaseError as exc:
            if statement.index and _invalid(connection, statement.index):
                # An invalid index is still maintained (and a unique one checked)
                # on every write: leave nothing behind.
                _drop_index(schema_editor, statement.index)
            _handle(statement.on_error, exc)
            raise


def _handle(on_error, exc):
    """Call the handler declared for ``exc``'s SQLSTATE (it raises the error that explains it)."""
    code = sqlstate(exc)
    for state_code, handler in on_error:
        if code == state_code:
            handler(exc)


def _invalid(connection, index):
    try:
        state = catalog.index_state(connection, index)
    except DatabaseError:
        return False
    return state is not None and not state["valid"]


def _drop_index(schema_editor, index):
    from .sql import drop_index_concurrently

    run_unbounded(schema_editor, drop_index_concurrently(index).sql)


def _enqueue(schema_editor, item, label):
    """A background copy: recorded for the runner, not run (``sqlmigrate`` shows it as a comment)."""
    def enqueue():
        if item.code is not None:
            background_mode.enqueue_python(schema_editor, name=item.progress, table=item.table, job=item.job,
                                           key=item.key, columns=item.columns, description=label,
                                           idempotent=item.idempotent)
        else:
            background_mode.enqueue_sql(schema_editor, name=item.progress, table=item.table, set_sql=item.set_sql,
                                        where_sql=item.where_sql, params=list(item.params) or None, key=item.key,
                                        columns=item.columns, description=label, idempotent=item.idempotent)

    if collecting(schema_editor):
        enqueue()
        schema_editor.collected_sql[-1] = DeclaredSQL(schema_editor.collected_sql[-1], item)
        return
    with step(label, item.label) as record:
        enqueue()
        record.detail = f"enqueued as background migration {item.progress} (manage.py backfills run)"


def _batched(schema_editor, item, label):
    if item.background:
        _enqueue(schema_editor, item, label)
        return
    if collecting(schema_editor) and item.code is not None:
        schema_editor.collected_sql.append(DeclaredSQL(
            f"-- safemigrate: {label} (Python, in resumable batches; no SQL to show)", item))
        return
    if collecting(schema_editor):
        backfill.backfill_table(schema_editor, item.table, set_sql=item.set_sql, where_sql=item.where_sql,
                                params=list(item.params) or None, key=item.key, progress_name=item.progress)
        schema_editor.collected_sql[-1] = DeclaredSQL(schema_editor.collected_sql[-1], item)
        return
    with step(label, item.label) as record:
        try:
            if item.code is not None:
                backfill.run_batches(schema_editor.connection, item.table, item.code, name=item.progress,
                                     key=item.key, batch_target_ms=item.batch_target_ms, pause_ms=item.pause_ms,
                                     record=record)
                return
            backfill.backfill_table(
                schema_editor, item.table, set_sql=item.set_sql, where_sql=item.where_sql,
                params=list(item.params) or None, key=item.key, progress_name=item.progress,
                batch_target_ms=item.batch_target_ms, pause_ms=item.pause_ms, record=record)
        except Exception as exc:
            for cls, handler in item.on_error:
                if isinstance(exc, cls):
                    handler(exc)
            raise


def _call(schema_editor, item, label):
    if collecting(schema_editor):
        return
    if item.quiet:
        item.function(schema_editor.connection)
        return
    with step(label, item.label) as record:
        detail = item.function(schema_editor.connection)
        if isinstance(detail, Skipped):
            record.skipped = True
        if detail:
            record.detail = str(detail)
