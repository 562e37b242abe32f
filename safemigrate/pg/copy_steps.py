"""Plan fragments of the copy-based operations (rename, type change, bigint key).

A copy keeps a second column in step with the one in use: a BEFORE trigger
copies every write across, a batched backfill copies the rows that existed
before it, and the contract step verifies both before anything is dropped.
Each fragment is a list of plan items (``pg.statements``) whose re-run
checks ask the catalog (or the backfill progress table), so an interrupted
run repeats only what is missing.
"""

import re

from django.db import transaction
from django.db.models import NOT_PROVIDED

from ..exceptions import UnsafeOperationError
from . import background_gate, background_state, backfill, catalog, index_copy, mirror, sql, triggers
from .schema import collecting, column_definition, field_indexes, like_index_statement, shadow_column, statement_name, \
    table_of
from .statements import Batched, Call, Transaction
from .steps import add_unique_via_index, set_not_null


def column_for(field, name):
    """The column Django gives a field called ``name`` (foreign keys and one-to-ones get ``_id``)."""
    return f"{name}_id" if field.is_relation and (field.many_to_one or field.one_to_one) else name


def add_plain_column(schema_editor, model, field, column):
    """Add ``column`` with ``field``'s type, nullable, no default, no index."""
    # No default of any kind, also not the one Django's schema editor makes
    # up for auto_now fields (the current time, kept for good).
    implicit = {name: False for name in ("auto_now", "auto_now_add") if hasattr(field, name)}
    definition, params = column_definition(
        schema_editor, model, field, null=True, default=NOT_PROVIDED, db_default=NOT_PROVIDED, column=column,
        **implicit,
    )
    table = model._meta.db_table
    add = sql.add_column(table, column, definition, params)
    if not getattr(field, "db_comment", None):
        return [add]
    # Django comments a column it adds in a statement of its own; so do we, in the same transaction.
    return [Transaction(add.label, [add, sql.comment_on_column(table, column, field.db_comment)],
                        skip_if=add.skip_if)]


def install_trigger(schema_editor, table, kind, old, new, new_type=None, version=triggers.VERSION):
    """The dual-write trigger ``old`` -> ``new`` (skipped once installed)."""
    pgid, install = triggers.upsert_sql(schema_editor.quote_name, table, kind, old, new, new_type, version=version)
    return [sql.create_trigger(install, table, pgid).but(label=f"install {kind} trigger {old} -> {new}")]


def drop_trigger_statements(schema_editor, table, kind, old, new):
    """DROP TRIGGER and DROP FUNCTION of a dual-write trigger (IF EXISTS: safe to re-run)."""
    pgid = triggers.trigger_id(table, kind, old, new)
    drop = triggers.drop_trigger_sql(table, pgid)
    return [sql.drop_trigger(drop, table, pgid), sql.drop_function(pgid)]


def drop_trigger(schema_editor, table, kind, old, new):
    return [Transaction(f"drop {kind} trigger", drop_trigger_statements(schema_editor, table, kind, old, new))]


def copy_rows(table, target, source_sql, differs_sql, progress, on_error=(), background=False):
    """``UPDATE table SET target = <source_sql> WHERE <differs_sql>`` in resumable keyset batches.

    ``background``: enqueue the batches for ``manage.py backfills run``
    instead (``pg.background_mode``); the contract gate then guards
    ``target`` until the copy is finished.
    """
    return [Batched("backfill existing rows", table, f"{sql.q(target)} = {source_sql}", differs_sql, progress,
                    on_error=tuple(on_error), background=background, columns=(target,))]


def deferred_not_null(schema_editor, table, column, *, what):
    """NOT NULL on a copy's target that its expand left out because the copy ran in the background.

    The contract step puts it after its completeness checks (which finish
    the copy first); nothing when the column is already NOT NULL (the copy
    ran inline) and nothing to show when SQL is only collected.
    """
    if collecting(schema_editor):
        return []
    info = catalog.column_info(schema_editor.connection, table, column)
    if info is None or not info["nullable"]:
        return []
    return set_not_null(schema_editor, table, column, what=what)


def forget_progress(progress):
    """Bookkeeping: forget a copy's progress record (quiet)."""
    return Call(f"forget {progress}", lambda connection: backfill.forget(connection, progress), quiet=True)


def discard_background(name, reason="its expand step was reversed"):
    """Bookkeeping: the background migration of that name is no longer wanted (its target is gone; quiet)."""
    return Call(f"discard background migration {name}",
                lambda connection: background_state.discard(connection, name, reason=reason), quiet=True)


def require_copy_complete(describe, table, kind, old, new, progress_name):
    """Refuse a contract step whose expand did not finish: it would drop the only full copy.

    The trigger must be installed (so every write since reached the copy)
    and the backfill recorded as done (so every older row did). A copy run
    in the background is finished inline within a time budget first, or the
    step refuses naming it (``pg.background_gate``).
    """
    def check(connection):
        background_gate.require_finished(describe, connection, name=progress_name)
        progress = backfill.progress_of(connection, progress_name)
        trigger = catalog.trigger_exists(connection, table, triggers.trigger_id(table, kind, old, new))
        if not trigger or not (progress and progress["done"]):
            missing = "its trigger is not installed" if not trigger else "its backfill has not finished"
            raise UnsafeOperationError(
                f"{describe}: refused, the expand step for {table}.{old} -> {new} is incomplete "
                f"({missing}). Dropping {old} now would lose the values not yet copied. Re-run the expand "
                f"migration (migrate) until it completes, then run the contract again."
            )

    return Call(f"check the copy {old} -> {new} is complete", check, quiet=True)


def forget_stale_progress(table, target_column, progress_name):
    """Start the copy afresh when its target column does not exist yet.

    A progress row under the same name can only belong to an earlier copy
    into a column that has since gone (the same field changed again in a
    later release). Trusting it would skip the copy and let the contract
    swap in a column of NULLs.
    """
    def forget(connection):
        if not catalog.column_exists(connection, table, target_column):
            backfill.forget(connection, progress_name)
            background_state.discard(connection, progress_name, reason="an earlier copy under the same name")

    return Call(f"forget a stale copy into {target_column}", forget, quiet=True)


def require_columns_agree(describe, table, old, new, differs_sql):
    """Verify, do not trust: refuse the contract when any row's copy differs from its source.

    The trigger keeps every written row in step and the backfill covered the
    rest, so this finds nothing unless something went wrong (a trigger
    dropped by hand, rows written with triggers disabled). The scan is a
    plain read (ACCESS SHARE), outside the short transaction that drops the
    old column.
    """
    def check(connection):
        rows = catalog.rows_where(connection, table, differs_sql, limit=5)
        if rows:
            raise UnsafeOperationError(
                f"{describe}: refused, {table}.{new} differs from {table}.{old} in rows with primary "
                f"key {', '.join(map(str, rows))} (and maybe more). Dropping {old} now would lose those values. "
                f"Copy them again (a Backfill setting {new} from {old} where they differ, or reverse the "
                f"expand migration and apply it again), then run migrate_contract again."
            )

    return Call(f"check {new} agrees with {old}", check, table=table, quiet=True)


def build_field_indexes(schema_editor, model, field):
    """The field's own indexes (plain, ``_like``) and unique constraint, built concurrently."""
    table = model._meta.db_table
    plan = [sql.create_index_concurrently(statement, statement_name(statement), table)
            for statement in field_indexes(schema_editor, model, field)]
    if field.unique and not field.primary_key:
        plan += add_unique_via_index(schema_editor, table, [field.column])
    return plan


def _like_indexes(schema_editor, table, column):
    """Names of the ``_like`` indexes on exactly ``column`` (Django's name for it when nothing can be asked)."""
    if collecting(schema_editor):
        return [schema_editor._create_index_name(table, [column], suffix="_like")]
    return [name for name, _, unique, columns, predicate in catalog.column_indexes(schema_editor.connection, table,
                                                                                [column])
            if not unique and columns == [column] and predicate is None and name.endswith("_like")]


def keep_like_index_name(schema_editor, model, field, old):
    """Rename the new column's ``_like`` index to the old column's (inside the contract's swap).

    Plain Django renames a column in place, so the field's ``_like`` index
    keeps the name it had, computed from the old column. That name matters:
    when unique goes (or the type changes), Django drops only the ``_like``
    index named after the *current* column, and keeps one named otherwise.
    The copy built its index under the new column's name; renamed to the old
    one's as the old column goes, a later change finds exactly what it finds
    in plain Django's database. [] when the field has no ``_like`` index.
    """
    like = like_index_statement(schema_editor, model, field)
    table = table_of(model)
    names = _like_indexes(schema_editor, table, old) if like is not None else []
    if not names or statement_name(like) in names:
        return []
    django = schema_editor._create_index_name(table, [old], suffix="_like")
    final = django if django in names else names[0]
    return [sql.rename_index(statement_name(like), final, table).but(
        label=f"rename index {statement_name(like)} to {final} (the name plain Django's rename keeps)")]


def restore_like_index_name(schema_editor, model, field, new):
    """Reverse of ``keep_like_index_name``: the new column's ``_like`` index takes its own name back.

    Before the old column's indexes are built again under their names: the
    runner would take the renamed index for the old column's and skip it.
    """
    like = like_index_statement(schema_editor, model, field)
    table = table_of(model)
    if like is None or collecting(schema_editor):
        return []
    own = statement_name(like)
    found = _like_indexes(schema_editor, table, new)
    if not found or own in found:
        return []
    return [sql.rename_index(found[0], own, table).but(label=f"rename index {found[0]} back to {own}")]


def drop_column_statements(schema_editor, table, column):
    """DROP COLUMN for a column going away, and the shadow safemigrate may have given it.

    A column has a shadow while the key it references becomes bigint, or
    while its own type changes. When the column itself goes (a rename's or a
    removal's contract), the shadow and its cast trigger have nothing left to
    copy; left behind, they would outlive every contract. Asked of the
    catalog, so ``sqlmigrate`` shows only the column's own drop.
    """
    shadow = shadow_column(column)
    statements = []
    if not collecting(schema_editor) and catalog.column_exists(schema_editor.connection, table, shadow):
        statements += drop_trigger_statements(schema_editor, table, "cast", column, shadow)
        statements.append(sql.drop_column(table, shadow))
    statements.append(sql.drop_column(table, column))
    return statements


def forget_shadow_progress(table, column):
    """Forget the copies into a dropped column's shadow (see ``drop_column_statements``)."""
    def forget(connection):
        for kind in ("bigint", "cast"):
            backfill.forget(connection, f"{table}.{kind}.{column}")

    return Call(f"forget the copies into {column}'s shadow", forget, quiet=True)


def undo_copy(schema_editor, table, kind, source, target, progress_name):
    """Reverse a copy's expand: its trigger, its target column, its progress and its background migration go.

    The progress row goes too: a later expand of the same change must copy
    every row again, not trust a copy whose column no longer exists.
    """
    return [*drop_trigger(schema_editor, table, kind, source, target),
            sql.drop_column(table, target),
            forget_progress(progress_name),
            discard_background(progress_name)]


def mirror_indexes(schema_editor, table, columns):
    """Rebuild, on the shadows, every index that mentions a swapped column.

    Dropping the int column at the swap drops them all: the foreign key's
    own index, an M2M table's UNIQUE (a_id, b_id), a OneToOne's unique
    constraint, a Meta index that only INCLUDEs the column or reads it in its
    WHERE or an expression. Each is built CONCURRENTLY from PostgreSQL's own
    text of it (``pg.index_copy``) under a temporary name and given its own
    name back inside the swap transaction; a re-run skips the built. An
    exclusion constraint's index cannot be built that way: refused.
    """
    plan = []
    renames = {column: shadow_column(column) for column in columns}
    for name, constraint, kind, _deferral, definition in catalog.dependent_indexes(schema_editor.connection,
                                                                                   table, columns):
        if kind == "x":
            raise UnsafeOperationError(mirror.exclusion_refusal(
                table, f"the bigint key swap copies {', '.join(columns)} into new bigint columns", "change the key",
                [constraint]))
        temporary = mirror.temporary_name(name)
        plan.append(sql.create_index_concurrently(
            index_copy.copy_definition(definition, temporary, table, renames), temporary, table).but(
            label=f"index {temporary} concurrently (for {name})"))
    return plan


def first_uncastable_row(connection, table, column, shadow, new_type):
    """``(pk, value)`` of a row whose ``column`` does not cast to ``new_type``, or None.

    Only rows not yet copied are scanned (a read: ACCESS SHARE). PostgreSQL 15
    has no ``pg_input_is_valid``, so each cast is tried in a PL/pgSQL block
    that reports the first failure through an error we catch.
    """
    with connection.cursor() as cursor:
        pk = connection.introspection.get_primary_key_column(cursor, table)
    q_table, q_pk, q_col, q_shadow = (sql.q(name) for name in (table, pk, column, shadow))
    block = f"""
        DO $safemigrate$
        DECLARE r record; converted {new_type};
        BEGIN
            FOR r IN SELECT {q_pk} AS pk, {q_col} AS value FROM {q_table}
                     WHERE {q_shadow} IS NULL AND {q_col} IS NOT NULL ORDER BY {q_pk} LOOP
                BEGIN
                    converted := CAST(r.value AS {cast_type(new_type)});
                EXCEPTION WHEN others THEN
                    RAISE EXCEPTION USING ERRCODE = 'SM001', MESSAGE = r.pk::text, DETAIL = r.value::text;
                END;
            END LOOP;
        END
        $safemigrate$
    """
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(block)
    except Exception as exc:  # the only error this block raises on purpose is SM001
        diag = getattr(exc.__cause__, "diag", None)
        if diag is None or diag.sqlstate != "SM001":
            raise
        return diag.message_primary, diag.message_detail
    return None



def cast_type(new_type):
    """The type a copy casts to: ``new_type`` without a length limit.

    An explicit ``CAST('abcdef' AS varchar(3))`` silently cuts the value to
    ``'abc'``; assigning ``'abcdef'`` to a ``varchar(3)`` column fails. Casting
    to the unlimited type and letting the assignment to the shadow column
    apply the limit turns a value that does not fit into an error that stops
    the expand, instead of a silent loss. Numeric precision is kept: PostgreSQL
    rounds to the scale in both cases (as plain Django's ALTER does) and fails
    on overflow.
    """
    match = re.fullmatch(r"\s*(character varying|varchar|character|char|bit varying|varbit)\s*\(\s*\d+\s*\)\s*",
                         new_type.lower())
    if not match:
        return new_type
    base = match.group(1)
    return {"character": "text", "char": "text", "varbit": "bit varying"}.get(base, base)



def differs(left, right):
    """SQL: the two expressions differ (by their text forms: works for every type, json and point too)."""
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



def columns_by_table(refs):
    """``{table: [columns]}`` of the referencing columns."""
    tables = {}
    for ref_table, column, *_ in refs:
        tables.setdefault(ref_table, []).append(column)
    return tables

