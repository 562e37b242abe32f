"""The real drop: ``manage.py archive purge``.

Purging drops the archived column, the copy-mode archive table or the
archived table, and marks the manifest row ``purged``, in one short
lock-bounded transaction (``pg.ddl.run_ddl``): a purge killed at any point
either happened or did not. Dropping a column is catalog-only (its values
stay on disk until the table's next rewrite or ``VACUUM FULL``); dropping a
table frees its files at commit.

Without ids, ``purge`` takes every archive older than ``--older-than`` or
``ARCHIVE_KEEP_DAYS``, so it can run from cron.
"""

from dataclasses import asdict, dataclass

from ..exceptions import ArchiveError
from . import archive_store as store
from . import backfill, catalog, sql
from .archive_ddl import bounded
from .archive_finish import progress_name
from .ddl import run_ddl
from .reporting import step


@dataclass
class PurgeResult:
    id: int
    target: str
    action: str  # "purged", "already purged", "already restored" or "would purge" (--dry-run)
    bytes: int = 0

    def as_json(self):
        return asdict(self)


def due(connection, older_than_days):
    """Archives (not restored, not purged) archived more than ``older_than_days`` days ago."""
    return store.select(connection, "state = ANY(%s) AND archived_at < now() - make_interval(secs => %s)",
                        [[store.PENDING, store.ARCHIVED], float(older_than_days) * 86400])


def purge(connection, archive, *, dry_run=False):
    """Drop one archive for good; returns a ``PurgeResult``."""
    if archive.state == store.PURGED:
        return PurgeResult(archive.id, archive.target, "already purged")
    if archive.state == store.RESTORED:
        return PurgeResult(archive.id, archive.target, "already restored")
    if archive.state == store.RESTORING:
        raise ArchiveError(
            f"{archive.describe()}: refused, it is being restored (the table is back in {archive.table_schema}; "
            f"its foreign keys are not). Run `manage.py archive restore {archive.id}` to finish the restore; "
            f"nothing was changed.")
    size = store.size_of(connection, archive) or 0
    if dry_run:
        return PurgeResult(archive.id, archive.target, "would purge", size)
    mark = store.update_statement(connection, archive.id, state=store.PURGED, purged_at="now()")
    statements, table = [], archive.table_name
    if archive.kind == "table":
        statements.append(sql.drop_table(store.qualified(connection, archive.archive_name)))
        table = archive.archive_name
    else:
        if catalog.table_exists(connection, archive.table_name) and catalog.column_exists(
                connection, archive.table_name, archive.archive_name):
            statements.append(sql.drop_column(archive.table_name, archive.archive_name))
        if archive.copy_table:
            statements.append(sql.drop_table(store.qualified(connection, archive.copy_table)))
    with connection.schema_editor(atomic=False) as editor, step(archive.describe(), "purge") as record:
        run_ddl(editor, bounded([*statements, mark]), table=table, record=record)
        record.detail = f"{size:,} bytes"
    for what in ("copy", "restore", "refill"):
        backfill.forget(connection, progress_name(archive, what))
    return PurgeResult(archive.id, archive.target, "purged", size)
