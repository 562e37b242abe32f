"""Reversing a type change's contract: the archived column swapped back in.

``FinishChangeTypeViaCopy`` ends a type change by dropping the old column
and renaming the shadow into its place. Reversing that must give the old
code its column back, with the old type, under the old name, while the new
code keeps writing: i.e. return to the expand state (old column in use,
the new-typed column its shadow, a cast trigger keeping the shadow in step).
Without the old values that is impossible: a cast back is not the value the
old code wrote (``'007'`` became ``7``; a numeric lost its scale). With the
archive it is the mirror image of the forward steps:

1. (copy mode) the archived column is added back and refilled from its
   archive table, in batches;
2. a cast trigger keeps the archived column equal to ``CAST(live AS old)``
   for every row written from now on;
3. a batched backfill does the same for every row whose archived value no
   longer casts to the live value: rows the new code wrote since the
   contract (inserted, or updated). Every other row keeps the exact value
   the old code wrote — at contract time every row's live value was verified
   to equal the cast of the archived one, so a difference can only be a
   write since, and the comparison checks every row rather than trusting a
   checksum;
4. NOT NULL, indexes and constraints the old column had are built on it
   (concurrently / NOT VALID + VALIDATE) under temporary names;
5. one short lock-bounded transaction swaps: the live column's objects get
   the shadow names the expand gave them, the live column becomes the shadow,
   the archived column takes the name, its objects their recorded names and
   its default; the reverse trigger is replaced by the forward cast trigger;
   the manifest row becomes ``restored``;
6. the copy progress is recorded as complete, so the contract can run again.

Each step asks the catalog first; a killed reverse, run again, finishes.
A value written since the contract that the old type cannot hold (after a
widening) stops step 3 with the row named, before anything is swapped.
"""

import hashlib

from django.db import DataError
from django.db.migrations.exceptions import IrreversibleError

from ..exceptions import ArchiveError, AtomicMigrationError, UnsafeOperationError
from . import archive_store as store
from . import backfill, catalog, mirror, sql, triggers
from .archive_decorations import Built, add_foreign_keys, attach_index, build, restore_not_null
from .archive_finish import finish, progress_name
from .archive_restore import VERIFIED
from .copy_steps import cast_type, differs, drop_trigger, drop_trigger_statements, first_uncastable_row, install_trigger
from .runner import run
from .schema import collecting, shadow_column, table_of
from .statements import Batched, Transaction


def restore_name(name):
    """Where an archived column's index or constraint is built before the swap names it."""
    return f"{name[:40]}_smrst_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _archive_for(connection, table, column, app_label):
    app, migration = store.current_migration(app_label)
    found = store.find(connection, table=table, column=column, reasons=["type-change"],
                       migration=f"{app}.{migration}")
    return found or store.find(connection, table=table, column=column, reasons=["type-change"])


def swap_back(operation, schema_editor, model, field, *, app_label):
    connection = schema_editor.connection
    table, column = table_of(model), field.column
    shadow = shadow_column(column)
    if collecting(schema_editor):
        return
    if connection.in_atomic_block:
        raise AtomicMigrationError(
            f"{operation.describe()}: its reverse cannot run inside a transaction: it backfills in batches and "
            f"builds indexes concurrently, each step committing on its own. Add `atomic = False` to the "
            f"migration, then migrate backwards again.")
    live_archives = _archive_for(connection, table, column, app_label)
    if not live_archives:
        app, migration = store.current_migration(app_label)
        done = store.find(connection, table=table, column=column, reasons=["type-change"], states=[store.RESTORED],
                          migration=f"{app}.{migration}")
        if done and catalog.column_exists(connection, table, shadow):
            _after_swap(operation, schema_editor, done[0], model, field)
            return
        raise IrreversibleError(
            f"{operation.describe()} cannot be reversed: the column with the old type was dropped, not archived "
            f"(SAFEMIGRATE['ARCHIVE'] was off for {app_label} when the contract ran), and a cast back is not "
            f"the value the old code wrote. Change the type back with a new forward migration instead.")
    archive = finish(connection, live_archives[0])
    new_type = field.db_parameters(connection)["type"]
    old_type = archive.definition["type"]
    source = archive.archive_name
    label = operation.describe()
    if archive.mode == "copy":
        _refill(schema_editor, archive, label, old_type)
    info = catalog.column_info(connection, table, source)
    if info is None or info["type"] != old_type:
        raise ArchiveError(
            f"{label}: the manifest no longer matches the database: {table}.{source} "
            f"{'does not exist' if info is None else 'is ' + info['type']} (recorded: {old_type}). Nothing was "
            f"swapped; `manage.py archive show {archive.id}` has the recorded definition.")
    q = schema_editor.quote_name
    q_column, q_source = q(column), q(source)
    old_cast, new_cast = cast_type(old_type), cast_type(new_type)
    # The per-row comparison below decides which values come back; the checksum says whether the
    # archive is still the one recorded (rows deleted since take their values with them).
    if archive.mode == "copy":
        found = store.column_summary(connection, store.qualified(connection, archive.copy_table), "pk", "value")
    else:
        found = store.column_summary(connection, q(table), archive.pk_column and q(archive.pk_column), q_source)
    checked = (f"{VERIFIED} ({found[0]:,} values)" if found[:2] == (archive.row_count, archive.checksum)
               else f"checksum differed: {found[0]:,} values, {archive.row_count:,} recorded (rows deleted since?)")
    run(schema_editor, install_trigger(schema_editor, table, "cast", column, source, old_cast), label=label)
    try:
        run(schema_editor, [Batched(f"rows written since the contract: {source} = CAST({column})", table,
                                    f"{q_source} = CAST({q_column} AS {old_cast})",
                                    differs(f"CAST({q_source} AS {new_cast})", q_column),
                                    f"{table}.unarchive.{column}")], label=label)
    except DataError as exc:
        sample = first_uncastable_row(connection, table, column, source, old_type)
        run(schema_editor, drop_trigger(schema_editor, table, "cast", column, source), label=label)
        backfill.forget(connection, f"{table}.unarchive.{column}")
        where = f"row with primary key {sample[0]} holds {sample[1]!r}" if sample else f"a row failed: {exc}"
        raise UnsafeOperationError(
            f"{label}: cannot swap the old column back: {where}, written since the contract, which {old_type} "
            f"cannot hold. Nothing was swapped (the reverse trigger was removed again). Change or clear such rows, "
            f"then migrate backwards again.") from exc
    if not archive.definition["nullable"]:
        not_null = Built()
        restore_not_null(schema_editor, label, table, source, not_null)
        if not_null.notes:
            raise ArchiveError(f"{label}: {not_null.notes[0]}. Nothing was swapped.")
    built = build(schema_editor, label, table, archive.definition, column=column, on_column=source,
                  temporary=restore_name)
    _swap(operation, schema_editor, archive, model, field, built, new_cast, checked)
    add_foreign_keys(schema_editor, label, built.later, built)
    _after_swap(operation, schema_editor, store.get(connection, archive.id), model, field)


def _refill(schema_editor, archive, label, old_type):
    """Copy mode: the archived column comes back from its archive table before anything else."""
    connection = schema_editor.connection
    q = schema_editor.quote_name
    table, source, pk = archive.table_name, archive.archive_name, archive.pk_column
    copy = store.qualified(connection, archive.copy_table)
    if not catalog.table_exists(connection, copy):
        raise ArchiveError(f"{label}: the manifest no longer matches the database: {copy} does not exist. "
                           f"Nothing was swapped.")
    run(schema_editor, [sql.add_column(table, source, old_type).but(label=f"add {table}.{source} back")], label=label)
    q_table, q_pk, q_source = q(table), q(pk), q(source)

    def batch(cursor, low, high, key_type):
        lower = f"t.{q_pk} > %s::{key_type} AND " if low is not None else ""
        cursor.execute(f"UPDATE {q_table} AS t SET {q_source} = a.value FROM {copy} AS a WHERE a.pk = t.{q_pk} "
                       f"AND {lower}t.{q_pk} <= %s::{key_type} AND t.{q_source} IS NULL",
                       [*([low] if low is not None else []), high])
        return cursor.rowcount

    run(schema_editor, [Batched(f"refill {table}.{source} from {copy}", table, None, None,
                                progress_name(archive, "refill"), key=pk, code=batch)], label=label)


def _inverse_renames(schema_editor, model, field, table, column, shadow):
    """Give the live column's objects the names the expand gave the shadow's (the forward swap, inverted)."""
    connection = schema_editor.connection
    schema = catalog_schema(connection, table)
    statements = []
    for suffix in ("", "_like", "_uniq"):
        final = schema_editor._create_index_name(table, [column], suffix=suffix)
        temporary = schema_editor._create_index_name(table, [shadow], suffix=suffix)
        state = catalog.index_state(connection, final)
        if state and state["table"] == table:
            statements.append(sql.rename_index(sql.qualified(schema, final), temporary, table))
    for item in mirror.plan(schema_editor, model, field, shadow, column, meta=True):
        if catalog.constraint_state(connection, table, item.final):
            statements.append(sql.rename_constraint(table, item.final, item.temporary))
        elif item.kind == "index" and catalog.index_state(connection, item.final):
            statements.append(sql.rename_index(sql.qualified(schema, item.final), item.temporary, table))
    return statements


def catalog_schema(connection, table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass(%s)",
                       [connection.ops.quote_name(table)])
        return cursor.fetchone()[0].strip('"')


def _swap(operation, schema_editor, archive, model, field, built, new_cast, checked):
    connection = schema_editor.connection
    q = schema_editor.quote_name
    table, column, source = archive.table_name, archive.column_name, archive.archive_name
    shadow = shadow_column(column)
    schema = catalog_schema(connection, table)
    statements = [*drop_trigger_statements(schema_editor, table, "cast", column, source),
                  *_inverse_renames(schema_editor, model, field, table, column, shadow),
                  sql.rename_column(table, column, shadow),
                  sql.rename_column(table, source, column)]
    statements += [sql.rename_index(sql.qualified(schema, built_name), final, table)
                   for built_name, final in built.index_renames.items()]
    statements += [sql.rename_constraint(table, built_name, final)
                   for built_name, final in built.constraint_renames.items()]
    statements += [attach_index(table, final, index, definition).but(skip_if=None)
                   for final, index, definition in built.unique_constraints]
    if catalog.column_info(connection, table, column)["default"] is not None:
        statements.append(sql.drop_default(table, shadow))
    if archive.definition["default"] is not None:
        statements.append(sql.set_default(table, column, archive.definition["default"]))
    pgid, install = triggers.upsert_sql(q, table, "cast", column, shadow, new_cast, version=triggers.VERSION)
    statements.append(sql.create_trigger(install, table, pgid).but(skip_if=None))
    if archive.mode == "copy":
        statements.append(sql.drop_table(store.qualified(connection, archive.copy_table)).but(skip_if=None))
    note = "; ".join([f"swapped back in by reversing {archive.label}", checked, *built.notes])
    statements.append(store.update_statement(connection, archive.id, state=store.RESTORED, restored_at="now()",
                                             note=note))
    run(schema_editor, [Transaction(f"swap {table}.{source} back in as {column}", statements)],
        label=operation.describe())


def _after_swap(operation, schema_editor, archive, model, field):
    """The expand state's bookkeeping: its copy counts as complete again (nothing left to copy)."""
    connection = schema_editor.connection
    q = schema_editor.quote_name
    table, column = archive.table_name, archive.column_name
    shadow = shadow_column(column)
    new_cast = cast_type(field.db_parameters(connection)["type"])
    run(schema_editor, [Batched("record the copy as complete", table, f"{q(shadow)} = CAST({q(column)} AS {new_cast})",
                                differs(q(shadow), f"CAST({q(column)} AS {new_cast})"), f"{table}.cast.{column}")],
        label=operation.describe())
    backfill.forget(connection, f"{table}.unarchive.{column}")
    backfill.forget(connection, progress_name(archive, "refill"))
