"""Bringing an archive back: ``manage.py archive restore ID`` (and ``DropTable`` reversed).

Before changing anything a restore checks that the manifest still matches
the database (the archived column or table is there, with the recorded
type or columns; the key it is matched on is still the table's key), that
nothing is in the way (a table of the same name; a column of the same name
while the migration that archived it is still applied, i.e. a new column
the code uses), and recomputes the archive's checksum. Any of these failing
is an ``ArchiveError`` and nothing changes (``--allow-changed`` accepts a
checksum that changed, e.g. because the new code deleted rows since).

What a restore puts back depends on what archived it, and on what reversing
that migration already did (a restore of a column needs the migration
reversed first; a table can be restored on its own):

- a **removed column**: ``DropColumn`` reversed re-creates it empty; restore
  fills it from the archive in keyset batches (row locks only), only where it
  is still NULL: a value the old code wrote since the reverse is newer and
  stays. Rows inserted after the contract read NULL, as they would have.
- a **renamed column's source**: reversing ``FinishRenameViaCopy`` already
  copied every row back from the new column, rows written since included;
  restore puts nothing over them and reports which rows changed since.
- a **bigint swap's integer column**: the bigint column holds the same keys;
  restore checks that every archived value equals it.
- a **type change's source**: restored by reversing the migration itself
  (``pg.archive_reverse``), which needs the old column back under its name.
- a **table**: moved back and renamed (one short lock-bounded transaction);
  its foreign keys come back NOT VALID and are then validated.

Removed and renamed columns also get their indexes, constraints, NOT NULL
and default back (``pg.archive_decorations``). The last step drops the
archive and marks the manifest ``restored`` in one short transaction; every
step before it can be run again, so a killed restore re-run finishes.
"""

import re
from dataclasses import asdict, dataclass, field

from ..exceptions import ArchiveError
from . import archive_store as store
from . import backfill, catalog, sql
from .archive_ddl import bounded, unmove_table
from .archive_decorations import Built, add_foreign_keys, build, restore_not_null
from .archive_finish import finish, progress_name
from .ddl import run_ddl
from .reporting import step

VERIFIED = "checksum verified"


@dataclass
class RestoreResult:
    id: int
    target: str
    action: str  # "restored" or "already restored"
    #: Values (rows, for a table) the archive held.
    values: int = 0
    #: Values written back into the live column (rows moved back, for a table).
    restored: int = 0
    #: Archived values the live column now holds unchanged.
    equal: int = 0
    #: Rows written since the contract: their newer value was kept.
    kept: int = 0
    #: Archived rows whose row no longer exists.
    gone: int = 0
    #: The archive's checksum matched the manifest (None: not checked now).
    checksum_ok: "bool | None" = None
    #: The live values of the archived rows have the archived checksum (nothing written since).
    live_checksum_equal: "bool | None" = None
    notes: list = field(default_factory=list)

    def summary(self):
        if self.action != "restored":
            return f"{self.action} ({'; '.join(self.notes)})" if self.notes else self.action
        parts = [f"{self.values:,} archived", f"{self.restored:,} written back", f"{self.equal:,} equal"]
        if self.kept:
            parts.append(f"{self.kept:,} written since and kept")
        if self.gone:
            parts.append(f"{self.gone:,} rows gone")
        parts.append("checksum verified" if self.checksum_ok else "checksum differed (--allow-changed)")
        return ", ".join(parts)

    def as_json(self):
        return asdict(self)


def restore(connection, archive, *, allow_changed=False):
    """Restore one archive (see the module docstring); returns a ``RestoreResult``."""
    if archive.state == store.PENDING:
        archive = finish(connection, archive)
    if archive.state == store.PURGED:
        raise ArchiveError(f"{archive.describe()} was purged{_when(archive.purged_at)}: its data is gone. "
                           f"Nothing was changed.")
    if archive.state == store.RESTORED:
        return RestoreResult(archive.id, archive.target, "already restored", values=archive.row_count or 0,
                             checksum_ok=VERIFIED in archive.note, notes=[archive.note] if archive.note else [])
    with connection.schema_editor(atomic=False) as editor:
        if archive.kind == "table":
            return _restore_table(editor, archive, allow_changed)
        return _restore_column(editor, archive, allow_changed)


def _when(moment):
    return f" on {moment:%Y-%m-%d %H:%M}" if moment else ""


def _unchanged(archive, label):
    return f"{label}: the manifest no longer matches the database: {{}}. Nothing was changed; `manage.py archive " \
           f"show {archive.id}` has the recorded definition."


def _checksum(archive, found, allow_changed, what):
    values, checksum = found
    ok = (values, checksum) == (archive.row_count, archive.checksum)
    if not ok and not allow_changed:
        raise ArchiveError(
            f"{archive.describe()}: refused, {what} no longer has the recorded checksum: it holds {values:,} "
            f"values (checksum {checksum}), the manifest recorded {archive.row_count:,} (checksum "
            f"{archive.checksum}). Rows deleted since the contract take their archived values with them; "
            f"anything else means the archive was changed by hand. Nothing was changed. To restore what is "
            f"there, run the restore again with --allow-changed.")
    return ok


# -- tables --------------------------------------------------------------------------------


def _restore_table(editor, archive, allow_changed):
    connection = editor.connection
    definition = archive.definition
    schema, table, archived = archive.table_schema, archive.table_name, archive.archive_name
    source = store.qualified(connection, archived)
    target = store.qualified(connection, table, schema)
    label = archive.describe()
    result = RestoreResult(archive.id, archive.target, "restored", values=archive.row_count or 0)
    unchanged = _unchanged(archive, label)
    if archive.state == store.ARCHIVED:
        if not catalog.table_exists(connection, source):
            raise ArchiveError(unchanged.format(f"{source} does not exist (dropped by hand?); "
                                                f"`archive purge {archive.id}` forgets it"))
        if catalog.table_exists(connection, target):
            raise ArchiveError(
                f"{label}: refused, restoring over an existing table: {target} exists. Its rows are not the "
                f"archived ones; moving the archive there would need one of them renamed. Nothing was changed. "
                f"Rename or drop {target} first, or read the archived rows at {source}.")
        names = definition["object_names"]
        taken = [old for old in [*names["indexes"], *names["sequences"]]
                 if catalog.table_exists(connection, store.qualified(connection, old, schema))]
        if taken:
            raise ArchiveError(
                f"{label}: refused, restoring over existing objects: {', '.join(taken)} already exist in schema "
                f"{schema} (the archived table's indexes or sequences had those names). Nothing was changed. "
                f"Rename them first.")
        with connection.cursor() as cursor:
            cursor.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                           "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                           [source])
            columns = cursor.fetchall()
        recorded = [(c["name"], c["type"]) for c in definition["columns"]]
        if [tuple(c) for c in columns] != recorded:
            raise ArchiveError(unchanged.format(f"{source} has columns {columns}, the manifest recorded {recorded}"))
        rows, checksum, _ = store.table_summary(connection, source)
        result.checksum_ok = _checksum(archive, (rows, checksum), allow_changed, source)
        note = f"{VERIFIED} ({rows:,} rows)" if result.checksum_ok else f"restored with {rows:,} rows (changed)"
        with step(label, f"move {table} back to {schema}") as record:
            run_ddl(editor, bounded([*unmove_table(schema, table, archived, store.schema_name(), names),
                                     store.update_statement(connection, archive.id, state=store.RESTORING,
                                                            note=note)]),
                    table=table, record=record)
        result.values = result.restored = result.equal = rows
    else:  # restoring: moved back by a run that was killed before its foreign keys were done
        result.checksum_ok = VERIFIED in archive.note
        result.restored = result.equal = archive.row_count or 0
    built = Built()
    foreign_keys = []
    for fk in definition["foreign_keys"]:
        referenced = re.search(r"REFERENCES\s+((?:\"(?:[^\"]|\"\")+\"|[\w$.])+)\s*\(", fk["definition"])
        if referenced and not catalog.relation_exists(connection, referenced.group(1)):
            built.notes.append(f"{fk['relname']}.{fk['name']} not restored: the table it references is gone")
            continue
        foreign_keys.append(fk)
    add_foreign_keys(editor, label, foreign_keys, built)
    result.notes = built.notes
    note = "; ".join([archive.note if archive.state == store.RESTORING else note, *built.notes])
    store.update(connection, archive.id, state=store.RESTORED, restored_at="now()", note=note)
    return result


# -- columns -------------------------------------------------------------------------------


def _restore_column(editor, archive, allow_changed):
    connection = editor.connection
    definition = archive.definition
    table, column, archived = archive.table_name, archive.column_name, archive.archive_name
    label = archive.describe()
    unchanged = _unchanged(archive, label)
    if archive.reason == "type-change":
        raise ArchiveError(
            f"{label}: a type change is restored by reversing {archive.label}: `python manage.py migrate "
            f"{archive.app_label} <the migration before {archive.migration}>` swaps the archived column back in "
            f"(its values as they were, every row written since cast back), lock-bounded. Nothing was changed.")
    live = catalog.column_info(connection, table, column) if catalog.table_exists(connection, table) else None
    if store.migration_applied(connection, archive.app_label, archive.migration):
        if live is not None:
            raise ArchiveError(
                f"{label}: refused, restoring over an existing column: {table}.{column} exists while "
                f"{archive.label}, which archived the old {column}, is still applied, so this {column} is a new "
                f"column the code uses. Nothing was changed. Reverse {archive.label} first (python manage.py "
                f"migrate {archive.app_label} <the migration before it>), or read the archived values from "
                f"{_source_text(connection, archive)}.")
        raise ArchiveError(
            f"{label}: reverse {archive.label} first (python manage.py migrate {archive.app_label} <the migration "
            f"before it>): reversing it re-creates {table}.{column} for the old code, and restore then puts the "
            f"archived values back into it. Nothing was changed.")
    if not catalog.table_exists(connection, table):
        raise ArchiveError(unchanged.format(f"table {table} does not exist"))
    if archive.mode == "soft":
        source_info = catalog.column_info(connection, table, archived)
        if source_info is None:
            raise ArchiveError(unchanged.format(f"{table}.{archived} does not exist"))
        if source_info["type"] != definition["type"]:
            raise ArchiveError(unchanged.format(
                f"{table}.{archived} is {source_info['type']}, the manifest recorded {definition['type']}"))
    elif not catalog.table_exists(connection, store.qualified(connection, archive.copy_table)):
        raise ArchiveError(unchanged.format(f"{store.qualified(connection, archive.copy_table)} does not exist"))
    if live is None:
        raise ArchiveError(
            f"{label}: {table}.{column} does not exist although {archive.label} is reversed, so there is nothing "
            f"to restore into (a DropColumn without field= cannot re-create it). Nothing was changed. Add the "
            f"column back ({definition['type']}, nullable), then restore again.")
    if archive.reason in ("removal", "rename") and live["type"] != definition["type"]:
        raise ArchiveError(unchanged.format(
            f"{table}.{column} is {live['type']} now, the archived values are {definition['type']}"))
    pk = archive.pk_column
    if not pk or store.single_key(connection, table)[0] != pk:
        raise ArchiveError(unchanged.format(
            f"the archived values are matched to rows by {pk or '(no key)'}, and that is not the primary key of "
            f"{table} now; they are still in {_source_text(connection, archive)}"))
    source, pk_sql, value_sql = _source(connection, archive)
    values, checksum, _ = store.column_summary(connection, source, pk_sql, value_sql)
    result = RestoreResult(archive.id, archive.target, "restored", values=values)
    result.checksum_ok = _checksum(archive, (values, checksum), allow_changed, _source_text(connection, archive))
    if archive.reason == "removal":
        result.restored = _fill(connection, archive, label, pk)
    built = Built()
    if archive.reason in ("removal", "rename"):
        built = build(editor, label, table, definition, column=column, on_column=column)
        add_foreign_keys(editor, label, built.later, built)
        if not definition["nullable"]:
            restore_not_null(editor, label, table, column, built)
        if definition["default"] is not None and catalog.column_info(connection, table, column)["default"] is None:
            with step(label, f"default of {column}") as record:
                run_ddl(editor, bounded([sql.set_default(table, column, definition["default"])]), table=table,
                        record=record)
    result.notes = built.notes
    _compare(connection, archive, pk, result)
    note = "; ".join([f"{VERIFIED} ({values:,} values)" if result.checksum_ok else "restored (checksum differed)",
                      *built.notes])
    drop = (sql.drop_column(table, archived) if archive.mode == "soft"
            else sql.drop_table(store.qualified(connection, archive.copy_table)))
    with step(label, "drop the archive, mark it restored") as record:
        run_ddl(editor, bounded([drop, store.update_statement(connection, archive.id, state=store.RESTORED,
                                                              restored_at="now()", note=note)]),
                table=table, record=record)
    backfill.forget(connection, progress_name(archive, "restore"))
    return result


def _source(connection, archive):
    """``(FROM item, key SQL, value SQL)`` of the archived values."""
    quote = connection.ops.quote_name
    if archive.mode == "soft":
        return quote(archive.table_name), quote(archive.pk_column), quote(archive.archive_name)
    return store.qualified(connection, archive.copy_table), "pk", "value"


def _source_text(connection, archive):
    if archive.mode == "soft":
        return f"{archive.table_name}.{archive.archive_name}"
    return store.qualified(connection, archive.copy_table)


def _fill(connection, archive, label, pk):
    """Write the archived values into the re-created column where it is still NULL, in keyset batches."""
    quote = connection.ops.quote_name
    q_table, q_pk, q_column = quote(archive.table_name), quote(pk), quote(archive.column_name)
    if archive.mode == "soft":
        q_source = quote(archive.archive_name)
        update = (f"UPDATE {q_table} SET {q_column} = {q_source} WHERE {{range}} AND {q_column} IS NULL "
                  f"AND {q_source} IS NOT NULL")
    else:
        copy = store.qualified(connection, archive.copy_table)
        update = (f"UPDATE {q_table} AS t SET {q_column} = a.value FROM {copy} AS a WHERE a.pk = t.{q_pk} "
                  f"AND {{range}} AND t.{q_column} IS NULL")
    prefix = "" if archive.mode == "soft" else "t."

    def batch(cursor, low, high, key_type):
        lower = f"{prefix}{q_pk} > %s::{key_type} AND " if low is not None else ""
        cursor.execute(update.format(range=f"{lower}{prefix}{q_pk} <= %s::{key_type}"),
                       [*([low] if low is not None else []), high])
        return cursor.rowcount

    with step(label, f"write the archived values back into {archive.table_name}.{archive.column_name}") as record:
        done = backfill.run_batches(connection, archive.table_name, batch, name=progress_name(archive, "restore"),
                                    key=pk, record=record)
    return done.rows


def _compare(connection, archive, pk, result):
    """Count archived values the live column holds unchanged, rows written since, and rows gone."""
    quote = connection.ops.quote_name
    live = f"t.{quote(archive.column_name)}"
    if archive.mode == "soft":
        value = f"t.{quote(archive.archive_name)}"
        source = f"{quote(archive.table_name)} AS t"
        key = f"t.{quote(pk)}"
        exists = "true"
    else:
        value = "a.value"
        source = (f"{store.qualified(connection, archive.copy_table)} AS a LEFT JOIN {quote(archive.table_name)} "
                  f"AS t ON t.{quote(pk)} = a.pk")
        key = "a.pk"
        exists = f"t.{quote(pk)} IS NOT NULL"
    same = f"({live})::text IS NOT DISTINCT FROM ({value})::text"
    row = store.read_one(connection,
                      f"SELECT count(*) FILTER (WHERE {exists} AND {same}), "
                      f"count(*) FILTER (WHERE {exists} AND NOT {same}), count(*) FILTER (WHERE NOT {exists}) "
                      f"FROM {source} WHERE {value} IS NOT NULL")
    result.equal, result.kept, result.gone = int(row[0]), int(row[1]), int(row[2])
    if archive.mode == "soft" and archive.row_count is not None:
        result.gone = max(0, archive.row_count - result.values)
    live_values, live_checksum, _ = store.column_summary(connection, source, key, live,
                                                          extra_where=f" AND {value} IS NOT NULL")
    result.live_checksum_equal = (live_values, live_checksum) == (archive.row_count, archive.checksum)
