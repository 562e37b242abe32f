"""Reusable DDL steps shared by several operations.

Each step asks the catalog before it acts (so a killed run resumes), runs its
DDL through ``ddl.run_ddl`` (lock-bounded and retried) and records itself in
the run report. ``operation`` is only used for its ``describe()`` (the report
heading) and, for ``set_not_null``, its ``model_name`` in the error hint.
"""

from django.db import models

from ..exceptions import UnsafeOperationError
from . import catalog
from .ddl import run_ddl
from .reporting import step
from .schema import (build_index_concurrently, collecting, drop_constraint, qn, shadow_column, table_of,
                     validate_constraint)


def not_null_check_name(schema_editor, table, column):
    return schema_editor._create_index_name(table, [column], suffix="_notnull")


def set_not_null(operation, schema_editor, model, field):
    """NOT VALID check → VALIDATE → SET NOT NULL (no scan) → drop the check.

    Every step asks the catalog first, so a run killed anywhere resumes. If
    VALIDATE finds NULLs the check is dropped again (the schema is left as it
    was) and the error says how many rows need a backfill.
    """
    connection = schema_editor.connection
    table, column = table_of(model), field.column
    check = not_null_check_name(schema_editor, table, column)
    quoted_table, quoted_column = qn(schema_editor, table), qn(schema_editor, column)
    live = not collecting(schema_editor)
    info = catalog.column_info(connection, table, column) if live else None
    if live and info is None:
        raise UnsafeOperationError(f"Column {column!r} of {table!r} does not exist; nothing to make NOT NULL.")
    if live and not info["nullable"]:
        with step(operation.describe(), "set not null") as record:
            record.skipped = True
            if catalog.constraint_state(connection, table, check):
                drop_constraint(schema_editor, table, check, record)
        return
    with step(operation.describe(), "add CHECK (IS NOT NULL) NOT VALID") as record:
        if live and catalog.constraint_state(connection, table, check):
            record.skipped = True
        else:
            run_ddl(
                schema_editor,
                [f"ALTER TABLE {quoted_table} ADD CONSTRAINT {qn(schema_editor, check)} "
                 f"CHECK ({quoted_column} IS NOT NULL) NOT VALID"],
                table=table,
                record=record,
            )

    def nulls_found(exc):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {quoted_table} WHERE {quoted_column} IS NULL")
            count = cursor.fetchone()[0]
        drop_constraint(schema_editor, table, check)
        raise UnsafeOperationError(
            f"Cannot make {table}.{column} NOT NULL: {count} rows hold NULL. Setting NOT NULL "
            f"now would make the scan fail after holding the table. Fill them first (a "
            f"Backfill operation in an earlier migration, e.g. Backfill({operation.model_name!r}, "
            f"set={{{column!r}: '<value>'}}, where='{column} IS NULL')), then run this migration "
            f"again. The schema was left as it was."
        ) from exc

    with step(operation.describe(), "validate the check (reads and writes continue)") as record:
        if not validate_constraint(schema_editor, table, check, on_violation=nulls_found):
            record.skipped = True
    with step(operation.describe(), "set not null using the validated check") as record:
        run_ddl(
            schema_editor,
            [f"ALTER TABLE {quoted_table} ALTER COLUMN {quoted_column} SET NOT NULL",
             f"ALTER TABLE {quoted_table} DROP CONSTRAINT IF EXISTS {qn(schema_editor, check)}"],
            table=table,
            record=record,
        )


def add_check(operation, schema_editor, table, name, check_sql, on_violation=None):
    """CHECK ``NOT VALID`` (instant), then ``VALIDATE`` (reads and writes continue); re-runnable.

    Adding the constraint checks only new rows, under an instant ACCESS
    EXCLUSIVE; VALIDATE scans the existing ones under SHARE UPDATE EXCLUSIVE.
    ``on_violation(exc)`` runs when existing rows fail the check.
    """
    with step(operation.describe(), f"check {name} NOT VALID") as record:
        if not collecting(schema_editor) and catalog.constraint_state(schema_editor.connection, table, name):
            record.skipped = True
        else:
            run_ddl(schema_editor, [f"ALTER TABLE {qn(schema_editor, table)} ADD CONSTRAINT "
                                    f"{qn(schema_editor, name)} CHECK ({check_sql}) NOT VALID"],
                    table=table, record=record)
    with step(operation.describe(), f"validate check {name} (reads and writes continue)") as record:
        if not validate_constraint(schema_editor, table, name, on_violation=on_violation):
            record.skipped = True


def drop_not_null(operation, schema_editor, model, field, *, unless_default=False, label="drop not null"):
    """DROP NOT NULL (instant), skipped when the catalog says the column is already nullable.

    ``unless_default``: also skipped when the column has a database default,
    for callers that only need inserts omitting the column to succeed.
    """
    table = table_of(model)
    with step(operation.describe(), label) as record:
        info = None if collecting(schema_editor) else catalog.column_info(
            schema_editor.connection, table, field.column
        )
        if info is not None and (info["nullable"] or (unless_default and info["default"] is not None)):
            record.skipped = True
            return
        # A bigint shadow (the key this column references is being widened)
        # follows: the cast trigger copies every NULL the code now writes.
        shadow = None if collecting(schema_editor) else catalog.column_info(
            schema_editor.connection, table, shadow_column(field.column))
        columns = [field.column] + ([shadow_column(field.column)] if shadow and not shadow["nullable"] else [])
        run_ddl(
            schema_editor,
            [f"ALTER TABLE {qn(schema_editor, table)} ALTER COLUMN {qn(schema_editor, column)} DROP NOT NULL"
             for column in columns],
            table=table,
            record=record,
        )


def _duplicates_error(table, columns):
    def raise_it(exc):
        raise UnsafeOperationError(
            f"Cannot add a unique constraint on {table}({', '.join(columns)}): existing rows hold "
            f"duplicate values ({exc}). The half-built index was removed. Remove or merge the "
            f"duplicates (a Backfill or data migration), then run the migration again."
        ) from exc

    return raise_it


def add_unique_via_index(operation, schema_editor, model, fields, name=None, deferrable=None, nulls_distinct=None):
    """Unique index CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX (instant).

    ``nulls_distinct=False`` builds the index ``NULLS NOT DISTINCT``
    (PostgreSQL 15+); the constraint attached to it keeps that property.
    """
    table = table_of(model)
    columns = [field.column for field in fields]
    name = name or schema_editor._create_index_name(table, columns, suffix="_uniq")
    if not collecting(schema_editor) and catalog.constraint_state(schema_editor.connection, table, name):
        with step(operation.describe(), f"unique constraint {name}") as record:
            record.skipped = True
        return
    quoted_columns = ", ".join(qn(schema_editor, column) for column in columns)
    with step(operation.describe(), f"unique index {name} concurrently") as record:
        build_index_concurrently(
            schema_editor,
            f"CREATE UNIQUE INDEX CONCURRENTLY {qn(schema_editor, name)} ON {qn(schema_editor, table)} ({quoted_columns})"
            + (" NULLS NOT DISTINCT" if nulls_distinct is False else ""),
            name,
            record,
            on_unique_violation=_duplicates_error(table, columns),
        )
    clause = ""
    if deferrable == models.Deferrable.DEFERRED:
        clause = " DEFERRABLE INITIALLY DEFERRED"
    elif deferrable == models.Deferrable.IMMEDIATE:
        clause = " DEFERRABLE INITIALLY IMMEDIATE"
    with step(operation.describe(), f"attach {name} as a constraint") as record:
        run_ddl(
            schema_editor,
            [f"ALTER TABLE {qn(schema_editor, table)} ADD CONSTRAINT {qn(schema_editor, name)} "
             f"UNIQUE USING INDEX {qn(schema_editor, name)}{clause}"],
            table=table,
            record=record,
        )


def foreign_key_statement(schema_editor, model, field):
    """Django's own ``ADD CONSTRAINT ... FOREIGN KEY`` statement for ``field`` (name, ON DELETE, deferral)."""
    return schema_editor._create_fk_sql(model, field, "_fk_%(to_table)s_%(to_column)s")


def foreign_key_name(schema_editor, model, field):
    """The name Django gives ``field``'s foreign key constraint."""
    return str(foreign_key_statement(schema_editor, model, field).parts["name"]).strip('"')


def add_foreign_key(operation, schema_editor, model, field, name=None):
    """FOREIGN KEY NOT VALID (instant), then VALIDATE (reads and writes continue).

    Built from Django's own ``_create_fk_sql``, so ON DELETE (``db_on_delete``
    where Django has it), DEFERRABLE INITIALLY DEFERRED and the name are
    exactly what a plain migration would create. ``name`` overrides the name
    (a temporary one while the old column still holds Django's).
    """
    table = table_of(model)
    statement = foreign_key_statement(schema_editor, model, field)
    if name is not None:
        statement.parts["name"] = qn(schema_editor, name)
    name = str(statement.parts["name"]).strip('"')
    with step(operation.describe(), f"foreign key {name} NOT VALID") as record:
        if not collecting(schema_editor) and catalog.constraint_state(schema_editor.connection, table, name):
            record.skipped = True
        else:
            run_ddl(schema_editor, [f"{statement} NOT VALID"], table=table, record=record)
    with step(operation.describe(), "validate foreign key (reads and writes continue)") as record:
        if not validate_constraint(schema_editor, table, name):
            record.skipped = True
    return name
