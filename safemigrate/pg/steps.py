"""Plan fragments shared by several operations.

Each function returns the list of plan items (``pg.statements``) for one
lock-friendly sequence — NOT NULL through a validated CHECK, a unique
constraint through a concurrent index, a foreign key NOT VALID then
VALIDATE — with the re-run check of every statement, so a run killed
anywhere resumes. The runner executes them; nothing here touches the
database except the error handlers, which run after a statement failed, and
one catalog look-up when the plan is run (not when its SQL is only
collected): on a partitioned table a unique constraint, and before
PostgreSQL 18 a foreign key, take the partition-by-partition sequence of
``pg.partitions`` instead.
"""

from django.db import models
from django.db.models import deletion

from ..exceptions import UnsafeOperationError
from . import background_gate, catalog, checks, partitions, sql
from .runner import run
from .schema import collecting, shadow_column
from .statements import Call, Transaction

UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
FK_VIOLATION = "23503"


def not_null_check_name(schema_editor, table, column):
    return schema_editor._create_index_name(table, [column], suffix="_notnull")


def set_not_null(schema_editor, table, column, *, model_name="<model>", what=None):
    """NOT VALID check → VALIDATE → SET NOT NULL (no scan) → drop the check.

    Each statement is skipped when the catalog shows it done, so a run killed
    anywhere resumes. If VALIDATE finds NULLs the check is dropped again (the
    schema is left as it was) and the error says how many rows need a
    backfill; ``model_name`` names the model in that hint. A background
    migration still filling the column is finished inline within its budget
    first, or the step refuses naming it (``pg.background_gate``; ``what``
    names the step in that message).
    """
    check = not_null_check_name(schema_editor, table, column)
    connection = schema_editor.connection

    def require_column(_connection):
        if not checks.ColumnExists(table, column).holds(connection):
            raise UnsafeOperationError(f"Column {column!r} of {table!r} does not exist; nothing to make NOT NULL.")

    def nulls_found(exc):
        count = catalog.null_count(connection, table, column)
        run(schema_editor, [sql.drop_constraint(table, check)], label=f"undo the check on {table}.{column}")
        raise UnsafeOperationError(
            f"Cannot make {table}.{column} NOT NULL: {count} rows hold NULL. Setting NOT NULL "
            f"now would make the scan fail after holding the table. Fill them first (a "
            f"Backfill operation in an earlier migration, e.g. Backfill({model_name!r}, "
            f"set={{{column!r}: '<value>'}}, where='{column} IS NULL')), then run this migration "
            f"again. The schema was left as it was."
        ) from exc

    def require_filled(connection):
        background_gate.require_finished(what or f"SET NOT NULL on {table}.{column}", connection, table=table,
                                         columns=[column])

    already = checks.ColumnNotNull(table, column)
    return [
        Call("column exists", require_column, quiet=True),
        Call("no background migration still fills the column", require_filled, quiet=True),
        sql.add_check_not_valid(table, check, f"{sql.q(column)} IS NOT NULL").but(
            label="add CHECK (IS NOT NULL) NOT VALID", skip_if=checks.ConstraintExists(table, check) | already),
        sql.validate_constraint(table, check, on_error=[(CHECK_VIOLATION, nulls_found)]).but(
            label="validate the check (reads and writes continue)"),
        Transaction("set not null using the validated check", [
            sql.set_not_null(table, column),
            sql.drop_constraint(table, check),
        ]),
    ]


def add_check(table, name, condition, on_violation=None):
    """CHECK ``NOT VALID`` (instant), then ``VALIDATE`` (reads and writes continue); re-runnable.

    Adding the constraint checks only new rows, under an instant ACCESS
    EXCLUSIVE; VALIDATE scans the existing ones under SHARE UPDATE EXCLUSIVE.
    ``on_violation(exc)`` runs when existing rows fail the check.
    """
    return [
        sql.add_check_not_valid(table, name, condition),
        sql.validate_constraint(table, name, on_error=[(CHECK_VIOLATION, on_violation)] if on_violation else ()).but(
            label=f"validate check {name} (reads and writes continue)"),
    ]


def drop_not_null(schema_editor, table, column, *, unless_default=False, label="drop not null"):
    """DROP NOT NULL (instant), skipped when the catalog says the column is already nullable.

    ``unless_default``: also skipped when the column has a database default,
    for callers that only need inserts omitting the column to succeed. A
    bigint shadow (the key this column references is being widened) follows:
    the cast trigger copies every NULL the code now writes into it.
    """
    shadow = shadow_column(column)
    done = checks.ColumnNullableOrDefaulted(table, column, defaulted=unless_default)
    statements = [sql.drop_not_null(table, column).but(skip_if=done)]
    if not collecting(schema_editor):
        statements.append(sql.drop_not_null(table, shadow).but(
            skip_if=done | checks.ColumnNullableOrDefaulted(table, shadow)))
    return [Transaction(label, statements)]


def _partitioned(schema_editor, table):
    """True when ``table`` is partitioned and the plan will run (issue 24; one catalog look-up)."""
    return not collecting(schema_editor) and catalog.is_partitioned(schema_editor.connection, table)


def duplicates_error(table, columns):
    """The handler for a unique build that found duplicates (the half-built index is gone by then)."""
    def raise_it(exc):
        raise UnsafeOperationError(
            f"Cannot add a unique constraint on {table}({', '.join(columns)}): existing rows hold "
            f"duplicate values ({exc}). The half-built index was removed. Remove or merge the "
            f"duplicates (a Backfill or data migration), then run the migration again."
        ) from exc

    return raise_it


def add_unique_via_index(schema_editor, table, columns, name=None, deferrable=None, nulls_distinct=None):
    """Unique index CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX (instant).

    ``nulls_distinct=False`` builds the index ``NULLS NOT DISTINCT``
    (PostgreSQL 15+); the constraint attached to it keeps that property.
    Both steps are skipped once the constraint exists.
    """
    name = name or schema_editor._create_index_name(table, columns, suffix="_uniq")
    clause = ""
    if deferrable == models.Deferrable.DEFERRED:
        clause = " DEFERRABLE INITIALLY DEFERRED"
    elif deferrable == models.Deferrable.IMMEDIATE:
        clause = " DEFERRABLE INITIALLY IMMEDIATE"
    if _partitioned(schema_editor, table):  # PostgreSQL refuses UNIQUE USING INDEX there
        return partitions.unique_plan(schema_editor, table, name, columns, deferrable=clause,
                                      nulls_not_distinct=nulls_distinct is False,
                                      on_duplicates=duplicates_error(table, columns))
    done = checks.ConstraintExists(table, name)
    build = sql.create_index_concurrently(
        sql.index_definition(table, name, columns, unique=True, nulls_not_distinct=nulls_distinct is False),
        name, table, on_error=[(UNIQUE_VIOLATION, duplicates_error(table, columns))])
    return [
        build.but(label=f"unique index {name} concurrently", skip_if=done),
        sql.add_unique_using_index(table, name, name, clause),
    ]


def foreign_key_statement(schema_editor, model, field):
    """Django's own ``ADD CONSTRAINT ... FOREIGN KEY`` statement for ``field`` (name, ON DELETE, deferral)."""
    return schema_editor._create_fk_sql(model, field, "_fk_%(to_table)s_%(to_column)s")


def foreign_key_name(schema_editor, model, field):
    """The name Django gives ``field``'s foreign key constraint."""
    return str(foreign_key_statement(schema_editor, model, field).parts["name"]).strip('"')


#: The ON DELETE a database-level ``on_delete`` writes, as ``pg_constraint.confdeltype`` has it.
DATABASE_ACTIONS = {"CASCADE": "c", "SET NULL": "n", "SET DEFAULT": "d"}


def database_on_delete(field):
    """The ON DELETE the database itself carries out for relation ``field`` (Django 6.1's ``DB_CASCADE``,
    ``DB_SET_NULL``, ``DB_SET_DEFAULT``), or None.

    A Python-level ``on_delete`` (CASCADE, PROTECT, ...) leaves the constraint NO ACTION: the ORM
    cascades before it deletes. Code relying on a database-level one sends only the parent's DELETE
    and counts on the constraint for the rest. Django before 6.1 has only Python-level ones.
    """
    kind = getattr(deletion, "DatabaseOnDelete", None)
    on_delete = getattr(field.remote_field, "on_delete", None)
    return on_delete.operation if kind is not None and isinstance(on_delete, kind) else None


def replace_foreign_key(schema_editor, model, field):
    """Make the column's foreign key what ``field`` declares now: its ON DELETE, or no constraint.

    One short transaction drops the constraint on the column and adds Django's own, NOT VALID, so no
    write ever goes unchecked; VALIDATE then reads the rows (reads and writes continue). They all
    met the old constraint, which references the same key: only what a delete of the parent does
    changes. A re-run finds the foreign key already there with the new action and skips it.
    """
    table = model._meta.db_table
    if collecting(schema_editor):
        old = [foreign_key_name(schema_editor, model, field)]
    else:
        old = schema_editor._constraint_names(model, [field.column], foreign_key=True)
    drops = [sql.drop_constraint(table, name).but(label=f"drop foreign key {name}") for name in old]
    if not field.db_constraint:
        return [Transaction("drop the foreign key", drops)] if drops else []
    statement = foreign_key_statement(schema_editor, model, field)
    name = str(statement.parts["name"]).strip('"')
    if _partitioned(schema_editor, table) and not partitions.supports_not_valid_foreign_key(
            schema_editor.connection):  # PostgreSQL < 18 refuses NOT VALID there: the partitions' sequence
        return [Transaction("drop the foreign key", drops), *add_foreign_key(schema_editor, model, field)]
    action = DATABASE_ACTIONS.get(database_on_delete(field), "a")
    target = field.remote_field.model._meta.db_table
    add = sql.add_foreign_key_not_valid(statement, table, name, target).but(skip_if=None)
    return [
        Transaction(f"foreign key {name} with ON DELETE {catalog.ON_DELETE[action]}, NOT VALID", [*drops, add],
                    skip_if=checks.ForeignKeyDeletes(table, name, action)),
        sql.validate_constraint(table, name).but(label="validate foreign key (reads and writes continue)"),
    ]


def add_foreign_key(schema_editor, model, field, name=None):
    """FOREIGN KEY NOT VALID (instant), then VALIDATE (reads and writes continue).

    Built from Django's own ``_create_fk_sql``, so ON DELETE (``db_on_delete``
    where Django has it), DEFERRABLE INITIALLY DEFERRED and the name are
    exactly what a plain migration would create. ``name`` overrides the name
    (a temporary one while the old column still holds Django's).
    """
    table = model._meta.db_table
    statement = foreign_key_statement(schema_editor, model, field)
    if name is not None:
        statement.parts["name"] = sql.q(name)
    name = str(statement.parts["name"]).strip('"')
    target = field.remote_field.model._meta.db_table
    if _partitioned(schema_editor, table) and not partitions.supports_not_valid_foreign_key(
            schema_editor.connection):  # PostgreSQL < 18 refuses NOT VALID there
        return partitions.foreign_key_plan(schema_editor, statement, table, name)
    return [
        sql.add_foreign_key_not_valid(statement, table, name, target),
        sql.validate_constraint(table, name).but(label="validate foreign key (reads and writes continue)"),
    ]
