"""The second half of archiving: checksum, and in copy mode the copy.

The archive step itself is a few catalog changes in the contract step's
short transaction; dropping the column's indexes (their files are unlinked
at commit), reading every value (for the checksum) or copying them cannot
happen under that lock. So first the indexes the step set aside are dropped
CONCURRENTLY, then the checksum is taken. ``finish_all`` runs right after each
migration (``pg.execution``) and before every ``archive`` command, so a run
killed in between is finished by the next one; until then the archive is
``pending`` and already safe (the column is out of the way, the table moved).

Copy mode copies ``(pk, value)`` of every non-NULL value into a table of the
archive schema with the batch engine (``pg.backfill.run_batches``: keyset
batches sized to ``BATCH_TARGET_MS``, ``BATCH_PAUSE_MS`` between them, the
replica-lag throttle, progress that a re-run resumes). Only when the copy's
checksum equals the column's does one short, lock-bounded transaction drop
the column and mark the archive done.
"""

from ..exceptions import ArchiveError
from . import archive_store as store
from . import backfill, catalog, sql
from .archive_ddl import bounded, held_indexes
from .ddl import run_ddl
from .reporting import step
from .runner import run


class Editor:
    """The two attributes ``run_ddl`` / ``run_unbounded`` read from a schema editor, and ``quote_name``."""

    collect_sql = False

    def __init__(self, connection):
        self.connection = connection
        self.quote_name = connection.ops.quote_name


def finish_all(connection):
    """Finish every ``pending`` archive; returns them as they are now."""
    if connection.vendor != "postgresql" or not store.exists(connection):
        return []
    return [finish(connection, archive) for archive in store.select(connection, "state = %s", [store.PENDING])]


def finish(connection, archive):
    """Checksum (and copy) one pending archive; returns the manifest row as it is afterwards."""
    if archive.state != store.PENDING:
        return archive
    if archive.kind == "table":
        _finish_table(connection, archive)
    else:
        _finish_column(connection, archive)
    return store.get(connection, archive.id)


def _finish_table(connection, archive):
    qualified = store.qualified(connection, archive.archive_name)
    with step(archive.describe(), "checksum the archived table") as record:
        if not catalog.table_exists(connection, qualified):
            store.update(connection, archive.id, state=store.PURGED, purged_at="now()",
                         note=f"{qualified} disappeared before its checksum was taken (dropped by hand?)")
            record.detail = "archived table missing"
            return
        rows, checksum, size = store.table_summary(connection, qualified)
        store.update(connection, archive.id, state=store.ARCHIVED, row_count=rows, checksum=checksum, bytes=size,
                     finished_at="now()")
        record.detail = f"{rows:,} rows, {size:,} bytes"


def _finish_column(connection, archive):
    quote = connection.ops.quote_name
    table, column = archive.table_name, archive.archive_name
    if not catalog.column_exists(connection, table, column):
        store.update(connection, archive.id, state=store.PURGED, purged_at="now()",
                     note=f"{table}.{column} disappeared before its checksum was taken (dropped by hand, or its "
                          f"table was dropped or archived since)")
        return
    if not _drop_held_indexes(connection, archive):
        return
    pk = archive.pk_column if archive.pk_column and catalog.column_exists(connection, table, archive.pk_column) \
        else None
    with step(archive.describe(), f"checksum {table}.{column}") as record:
        values, checksum, size = store.column_summary(connection, quote(table), pk and quote(pk), quote(column))
        record.detail = f"{values:,} values, {size:,} bytes"
    if archive.mode != "copy" or pk is None:
        note = "" if archive.mode != "copy" else "no single-column primary key: kept in soft mode, not copied"
        store.update(connection, archive.id, state=store.ARCHIVED, mode="soft", row_count=values, checksum=checksum,
                     bytes=size, finished_at="now()", note=note)
        return
    _copy(connection, archive, pk, values, checksum)


def _drop_held_indexes(connection, archive):
    """Drop CONCURRENTLY the indexes the archive step set aside (``archive_ddl.hold_indexes``).

    Returns False, leaving the archive pending, inside a transaction (where
    PostgreSQL refuses CONCURRENTLY): the next ``migrate`` or ``archive``
    command finishes it.
    """
    held = held_indexes(archive.definition)
    if not held:
        return True
    if connection.in_atomic_block:
        return False
    schema = archive.table_schema
    run(Editor(connection), [sql.drop_index_concurrently(sql.qualified(schema, name), archive.table_name)
                             for name in held], label=archive.describe())
    return True


def drop_all_held_indexes(connection):
    """Drop CONCURRENTLY every index a pending column archive set aside; returns how many archives had some.

    Run by the contract operations right after their archive step (``archive.drop_set_aside_indexes``),
    so a non-atomic contract ends with the schema plain Django's ``DROP COLUMN`` leaves; inside a
    transaction nothing happens and the finish after the migration does it.
    """
    if connection.in_atomic_block or not store.exists(connection):
        return 0
    pending = [a for a in store.select(connection, "state = %s AND kind = %s", [store.PENDING, "column"])
               if held_indexes(a.definition)]
    for archive in pending:
        _drop_held_indexes(connection, archive)
    return len(pending)


def progress_name(archive, what):
    return f"archive.{archive.id}.{what}"


def _copy(connection, archive, pk, values, checksum):
    quote = connection.ops.quote_name
    table, column = archive.table_name, archive.archive_name
    target = store.qualified(connection, archive.copy_table)
    pk_type = catalog.column_info(connection, table, pk)["type"]
    value_type = catalog.column_info(connection, table, column)["type"]
    with connection.cursor() as cursor:
        statement = sql.create_archive_table(target, pk_type, value_type)
        cursor.execute(statement.sql, statement.params)
    q_table, q_pk, q_column = quote(table), quote(pk), quote(column)

    def batch(cursor, low, high, key_type):
        lower = f"{q_pk} > %s::{key_type} AND " if low is not None else ""
        cursor.execute(
            f"INSERT INTO {target} (pk, value) SELECT {q_pk}, {q_column} FROM {q_table} "
            f"WHERE {lower}{q_pk} <= %s::{key_type} AND {q_column} IS NOT NULL ON CONFLICT (pk) DO NOTHING",
            [*([low] if low is not None else []), high])
        return cursor.rowcount

    with step(archive.describe(), f"copy {table}.{column} into {target}") as record:
        backfill.run_batches(connection, table, batch, name=progress_name(archive, "copy"), key=pk, record=record)
    copied, copied_checksum, _ = store.column_summary(connection, target, "pk", "value")
    if (copied, copied_checksum) != (values, checksum):
        raise ArchiveError(
            f"{archive.describe()}: the copy in {target} ({copied:,} values) does not match {table}.{column} "
            f"({values:,} values; checksums {copied_checksum} and {checksum}). Nothing is lost: the column stays, "
            f"renamed, and the archive stays pending. Find what wrote to {table}.{column} (nothing should), "
            f"then run `manage.py archive list` to copy again.")
    with step(archive.describe(), f"drop {table}.{column} (the copy holds it)") as record:
        size_sql = ("SELECT pg_total_relation_size(%s::regclass)", [target])
        with connection.cursor() as cursor:
            cursor.execute(*size_sql)
            size = cursor.fetchone()[0]
        run_ddl(Editor(connection),
                bounded([sql.drop_column(table, column),
                         store.update_statement(connection, archive.id, state=store.ARCHIVED, row_count=values,
                                                checksum=checksum, bytes=size, finished_at="now()")]),
                table=table, record=record)
    backfill.forget(connection, progress_name(archive, "copy"))
