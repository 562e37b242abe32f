"""Shared steps of the copy-based operations (rename, type change, bigint key).

Each step asks the catalog (or the backfill progress table) before acting,
so an interrupted run repeats only what is missing.
"""

import re

from django.db import transaction
from django.db.models import NOT_PROVIDED

from ..exceptions import UnsafeOperationError
from . import backfill, catalog, mirror, triggers
from .ddl import run_ddl
from .reporting import step
from .schema import (  # noqa: F401  (shadow_column: importable from here, as before)
    shadow_column,
    build_index_concurrently,
    collecting,
    column_definition,
    field_indexes,
    qn,
    statement_name,
    table_of,
)
from .steps import add_unique_via_index


def _column_for(field, name):
    """The column Django gives a field called ``name`` (foreign keys and one-to-ones get ``_id``)."""
    return f"{name}_id" if field.is_relation and (field.many_to_one or field.one_to_one) else name


def add_plain_column(operation, schema_editor, model, field, column):
    """Add ``column`` with ``field``'s type, nullable, no default, no index."""
    table = table_of(model)
    with step(operation.describe(), f"add column {column}") as record:
        if not collecting(schema_editor) and catalog.column_exists(schema_editor.connection, table, column):
            record.skipped = True
            return
        definition, params = column_definition(
            schema_editor, model, field, null=True, default=NOT_PROVIDED, db_default=NOT_PROVIDED, column=column
        )
        run_ddl(
            schema_editor,
            [(f"ALTER TABLE {qn(schema_editor, table)} ADD COLUMN IF NOT EXISTS {qn(schema_editor, column)} {definition}",
              params)],
            table=table,
            record=record,
        )


def with_trigger_version(kwargs, operation):
    """Deconstructed kwargs; ``trigger_version`` written only when not 1.

    A migration file without it means version 1 forever (the constructor
    default never moves): a later release's new trigger body is written out
    explicitly, so an old migration never starts installing different SQL.
    """
    if operation.trigger_version != 1:
        kwargs["trigger_version"] = operation.trigger_version
    return kwargs


def install_trigger(operation, schema_editor, table, kind, old, new, new_type=None):
    version = getattr(operation, "trigger_version", triggers.VERSION)
    with step(operation.describe(), f"install {kind} trigger {old} -> {new}") as record:
        pgid, sql = triggers.upsert_sql(schema_editor.quote_name, table, kind, old, new, new_type, version=version)
        if not collecting(schema_editor) and catalog.trigger_exists(schema_editor.connection, table, pgid):
            record.skipped = True
            return
        # A trigger an older release installed under another name goes in the
        # same transaction, so exactly one of them runs from then on.
        legacy = not collecting(schema_editor) and any(
            catalog.trigger_exists(schema_editor.connection, table, name)
            for name in triggers.trigger_ids(table, kind, old, new)[1:])
        drops = triggers.drop_sql(schema_editor.quote_name, table, kind, old, new) if legacy else []
        run_ddl(schema_editor, [*drops, sql], table=table, record=record)


def drop_trigger(operation, schema_editor, table, kind, old, new):
    with step(operation.describe(), f"drop {kind} trigger") as record:
        run_ddl(schema_editor, triggers.drop_sql(schema_editor.quote_name, table, kind, old, new),
                table=table, record=record)


def copy_rows(operation, schema_editor, table, set_sql, where_sql, name):
    with step(operation.describe(), "backfill existing rows") as record:
        backfill.backfill_table(schema_editor, table, set_sql=set_sql, where_sql=where_sql,
                                progress_name=name, record=record)


def require_copy_complete(operation, connection, table, kind, old, new, progress_name):
    """Refuse a contract step whose expand did not finish: it would drop the only full copy.

    The trigger must be installed (so every write since reached the copy)
    and the backfill recorded as done (so every older row did).
    """
    progress = backfill.progress_of(connection, progress_name)
    trigger = any(catalog.trigger_exists(connection, table, name)
                  for name in triggers.trigger_ids(table, kind, old, new))
    if not trigger or not (progress and progress["done"]):
        missing = "its trigger is not installed" if not trigger else "its backfill has not finished"
        raise UnsafeOperationError(
            f"{operation.describe()}: refused, the expand step for {table}.{old} -> {new} is incomplete "
            f"({missing}). Dropping {old} now would lose the values not yet copied. Re-run the expand "
            f"migration (migrate) until it completes, then run the contract again."
        )


def forget_stale_progress(schema_editor, table, target_column, progress_name):
    """Start the copy afresh when its target column does not exist yet.

    A progress row under the same name can only belong to an earlier copy
    into a column that has since gone (the same field changed again in a
    later release). Trusting it would skip the copy and let the contract
    swap in a column of NULLs.
    """
    connection = schema_editor.connection
    if not collecting(schema_editor) and not catalog.column_exists(connection, table, target_column):
        backfill.forget(connection, progress_name)


def require_columns_agree(operation, schema_editor, table, old, new, differs_sql):
    """Verify, do not trust: refuse the contract when any row's copy differs from its source.

    The trigger keeps every written row in step and the backfill covered the
    rest, so this finds nothing unless something went wrong (a trigger
    dropped by hand, rows written with triggers disabled). The scan is a
    plain read (ACCESS SHARE), outside the short transaction that drops the
    old column.
    """
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        pk = connection.introspection.get_primary_key_column(cursor, table)
        cursor.execute(
            f"SELECT {qn(schema_editor, pk)} FROM {qn(schema_editor, table)} WHERE {differs_sql} LIMIT 5")
        rows = [row[0] for row in cursor.fetchall()]
    if rows:
        raise UnsafeOperationError(
            f"{operation.describe()}: refused, {table}.{new} differs from {table}.{old} in rows with primary "
            f"key {', '.join(map(str, rows))} (and maybe more). Dropping {old} now would lose those values. "
            f"Copy them again (a Backfill setting {new} from {old} where they differ, or reverse the "
            f"expand migration and apply it again), then run migrate_contract again."
        )


def build_field_indexes(operation, schema_editor, model, field):
    for statement in field_indexes(schema_editor, model, field):
        with step(operation.describe(), f"index {statement_name(statement)} concurrently") as record:
            build_index_concurrently(schema_editor, statement, statement_name(statement), record)
    if field.unique and not field.primary_key:
        add_unique_via_index(operation, schema_editor, model, [field])


def drop_column(operation, schema_editor, table, column):
    with step(operation.describe(), f"drop column {column}") as record:
        run_ddl(schema_editor,
                [f"ALTER TABLE {qn(schema_editor, table)} DROP COLUMN IF EXISTS {qn(schema_editor, column)}"],
                table=table, record=record)


def drop_column_statements(schema_editor, table, column):
    """DROP COLUMN for a column going away, and the shadow safemigrate may have given it.

    A column has a shadow while the key it references becomes bigint, or
    while its own type changes. When the column itself goes (a rename's or a
    removal's contract), the shadow and its cast trigger have nothing left to
    copy; left behind, they would outlive every contract. Asked of the
    catalog, so ``sqlmigrate`` shows only the column's own drop.
    """
    q = schema_editor.quote_name
    shadow = shadow_column(column)
    statements = []
    if not collecting(schema_editor) and catalog.column_exists(schema_editor.connection, table, shadow):
        statements += triggers.drop_sql(q, table, "cast", column, shadow)
        statements.append(f"ALTER TABLE {q(table)} DROP COLUMN IF EXISTS {q(shadow)}")
    statements.append(f"ALTER TABLE {q(table)} DROP COLUMN IF EXISTS {q(column)}")
    return statements


def forget_shadow_progress(schema_editor, table, column):
    """Forget the copies into a dropped column's shadow (see ``drop_column_statements``)."""
    if not collecting(schema_editor):
        for kind in ("bigint", "cast"):
            backfill.forget(schema_editor.connection, f"{table}.{kind}.{column}")


def undo_copy(operation, schema_editor, table, kind, source, target, progress_name):
    """Reverse a copy's expand: its trigger, its target column and its progress go.

    The progress row goes too: a later expand of the same change must copy
    every row again, not trust a copy whose column no longer exists.
    """
    drop_trigger(operation, schema_editor, table, kind, source, target)
    drop_column(operation, schema_editor, table, target)
    if not collecting(schema_editor):
        backfill.forget(schema_editor.connection, progress_name)


def first_uncastable_row(schema_editor, table, column, shadow, new_type):
    """``(pk, value)`` of a row whose ``column`` does not cast to ``new_type``, or None.

    Only rows not yet copied are scanned (a read: ACCESS SHARE). PostgreSQL 15
    has no ``pg_input_is_valid``, so each cast is tried in a PL/pgSQL block
    that reports the first failure through an error we catch.
    """
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        pk = connection.introspection.get_primary_key_column(cursor, table)
    q_table, q_pk, q_col, q_shadow = (qn(schema_editor, name) for name in (table, pk, column, shadow))
    sql = f"""
        DO $safemigrate$
        DECLARE r record; converted {new_type};
        BEGIN
            FOR r IN SELECT {q_pk} AS pk, {q_col} AS value FROM {q_table}
                     WHERE {q_shadow} IS NULL AND {q_col} IS NOT NULL ORDER BY {q_pk} LOOP
                BEGIN
                    converted := CAST(r.value AS {cast_type(new_type, 2)});
                EXCEPTION WHEN others THEN
                    RAISE EXCEPTION USING ERRCODE = 'SM001', MESSAGE = r.pk::text, DETAIL = r.value::text;
                END;
            END LOOP;
        END
        $safemigrate$
    """
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(sql)
    except Exception as exc:  # the only error this block raises on purpose is SM001
        diag = getattr(exc.__cause__, "diag", None)
        if diag is None or diag.sqlstate != "SM001":
            raise
        return diag.message_primary, diag.message_detail
    return None


def cast_type(new_type, version):
    """The type a copy casts to: ``new_type`` without a length limit (version 2 on).

    An explicit ``CAST('abcdef' AS varchar(3))`` silently cuts the value to
    ``'abc'``; assigning ``'abcdef'`` to a ``varchar(3)`` column fails. Casting
    to the unlimited type and letting the assignment to the shadow column
    apply the limit turns a value that does not fit into an error that stops
    the expand, instead of a silent loss. Numeric precision is kept: PostgreSQL
    rounds to the scale in both cases (as plain Django's ALTER does) and fails
    on overflow.
    """
    if version < 2:
        return new_type
    match = re.fullmatch(r"\s*(character varying|varchar|character|char|bit varying|varbit)\s*\(\s*\d+\s*\)\s*",
                         new_type.lower())
    if not match:
        return new_type
    base = match.group(1)
    return {"character": "text", "char": "text", "varbit": "bit varying"}.get(base, base)


def differs(left, right, version):
    """SQL: the two expressions differ (by text from version 2 on: works for every type)."""
    if version < 2:
        return f"{left} IS DISTINCT FROM {right}"
    return f"({left})::text IS DISTINCT FROM ({right})::text"


def in_place_type_change(old_type, new_type):
    """True when PostgreSQL changes ``old_type`` to ``new_type`` without rewrite or scan."""
    def parse(text):
        match = re.fullmatch(r"\s*([a-z ]+?)\s*(?:\(([\d, ]+)\))?\s*", text.lower())
        if not match:
            return text.lower(), None
        args = tuple(int(a) for a in match.group(2).split(",")) if match.group(2) else None
        return match.group(1).replace("character varying", "varchar"), args

    (old_base, old_args), (new_base, new_args) = parse(old_type), parse(new_type)
    if old_base == "varchar" and new_base == "text":
        return True
    if old_base == new_base == "varchar":
        return new_args is None or (old_args is not None and new_args[0] >= old_args[0])
    if old_base == new_base == "numeric":
        if new_args is None:
            return True
        return old_args is not None and len(old_args) == len(new_args) == 2 and \
            new_args[1] == old_args[1] and new_args[0] >= old_args[0]
    return False


def shadow_index_name(schema_editor, table, column):
    return schema_editor._create_index_name(table, [shadow_column(column)], suffix="_sm")


def mirror_indexes(operation, schema_editor, table, columns):
    """Rebuild, on the shadows, every index that includes a swapped column.

    Dropping the int column at the swap drops them all: the foreign key's
    own index, an M2M table's UNIQUE (a_id, b_id), a OneToOne's unique
    constraint. Each is built CONCURRENTLY under a temporary name and given
    its own name back inside the swap transaction; a re-run skips the built.
    """
    q = schema_editor.quote_name
    for name, _, unique, cols, predicate in catalog.column_indexes(schema_editor.connection, table, columns):
        shadowed = ", ".join(q(shadow_column(col) if col in columns else col) for col in cols)
        temporary = mirror.temporary_name(name)
        sql = (f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {q(temporary)} ON {q(table)} "
               f"({shadowed})" + (f" WHERE {predicate}" if predicate else ""))
        with step(operation.describe(), f"index {temporary} concurrently (for {name})") as record:
            build_index_concurrently(schema_editor, sql, temporary, record)


def columns_by_table(refs):
    """``{table: [columns]}`` of the referencing columns."""
    tables = {}
    for ref_table, column, *_ in refs:
        tables.setdefault(ref_table, []).append(column)
    return tables
