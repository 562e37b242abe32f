"""Changing a column's type without a rewrite under lock.

In place (instant) when PostgreSQL needs neither a rewrite nor a scan
(varchar widening, varchar → text, numeric precision increase). Otherwise a
shadow column of the new type is kept equal to ``CAST(column AS new)`` by a
trigger and backfilled; its indexes and constraints are built without long
locks; the contract step (or the expand one, for a widening both code
versions can share) swaps it in, in one short transaction.
"""

from django.db import DataError
from django.db.migrations.operations.fields import AlterField, FieldOperation

from ..conf import conf
from ..exceptions import UnsafeOperationError
from ..pg import archive, backfill, catalog, mirror, sql
from ..pg.copy_steps import (
    add_plain_column,
    build_field_indexes,
    cast_type,
    copy_rows,
    deferred_not_null,
    differs,
    drop_trigger,
    drop_trigger_statements,
    first_uncastable_row,
    forget_progress,
    forget_stale_progress,
    in_place_type_change,
    install_trigger,
    require_columns_agree,
    require_copy_complete,
    undo_copy,
)
from ..pg.runner import run
from ..pg.schema import collecting, like_index_statement, model_of, shadow_column, statement_name, table_of
from ..pg.statements import Call, Skipped, Transaction
from ..pg.steps import set_not_null
from ..stages import Stage
from .background_argument import BackgroundArgument
from .base import SafeOperation, StageArgument, StandaloneOperation
from .triggered import TriggerVersion

QUERY_CANCELED = "57014"


def shadow_field_of(field, name, model, shadow):
    """``field`` as it lives on the shadow column (for its indexes' definitions)."""
    shadow_field = field.clone()
    shadow_field.set_attributes_from_name(name)
    shadow_field.model = model
    shadow_field.column = shadow_field.db_column = shadow
    return shadow_field


def _comment_change(table, column, old_field, new_field):
    """The column comment, when the same edit changes it: an in-place change keeps the column.

    The shadow-column route needs nothing: the shadow is added with the new
    field's comment and takes the column's place at the swap.
    """
    if (old_field.db_comment or None) == (new_field.db_comment or None):
        return []
    return [sql.comment_on_column(table, column, new_field.db_comment or None)]


def exclusion_refusal(model_name, name, old_type, new_type, constraints):
    """``mirror.exclusion_refusal`` for a type change (the autodetector's and the operation's one message)."""
    return mirror.exclusion_refusal(f"{model_name}.{name}",
                                    f"changing its type ({old_type} -> {new_type}) copies it into a new column",
                                    "change the type", constraints)


class ChangeTypeViaCopy(BackgroundArgument, TriggerVersion, SafeOperation, AlterField):
    """Expand half of a column type change.

    In place (instant) when PostgreSQL needs neither a rewrite nor a scan.
    Otherwise a shadow column of the new type is kept equal to ``CAST(column
    AS new)`` by a trigger and backfilled; its indexes are built
    concurrently. During the rollout both code versions write the existing
    column (old type); the contract step swaps the shadow in. With
    ``background`` the copy of the existing rows is enqueued for ``manage.py
    backfills run`` and the shadow's NOT NULL waits for the contract step.
    """

    requires_non_atomic = True

    def __init__(self, model_name, name, field, trigger_version=1, background=None):
        self.trigger_version = trigger_version
        #: Copy the rows in the background (True), inside migrate (False), or as BACKGROUND_MIN_ROWS says (None).
        self.background = background
        super().__init__(model_name, name, field)

    def _types(self, schema_editor, old_state, new_state, app_label):
        old_model = model_of(old_state, app_label, self.model_name)
        new_model = model_of(new_state, app_label, self.model_name)
        old_field = old_model._meta.get_field(self.name)
        new_field = new_model._meta.get_field(self.name)
        connection = schema_editor.connection
        return (old_model, new_model, old_field, new_field,
                old_field.db_parameters(connection)["type"], new_field.db_parameters(connection)["type"])

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        old_model, new_model, old_field, new_field, old_type, new_type = self._types(
            schema_editor, from_state, to_state, app_label)
        table, column = table_of(new_model), new_field.column
        if old_type == new_type:
            return []
        if in_place_type_change(old_type, new_type):
            return [sql.change_type_in_place(table, column, new_type, getattr(new_field, "db_collation", None)).but(
                        label=f"change type in place to {new_type} (no rewrite)"),
                    *_comment_change(table, column, old_field, new_field),
                    *self._rebuild_like_index(schema_editor, old_model, old_field, new_model, new_field)]
        shadow = shadow_column(column)
        excluding = mirror.exclusion_constraints(old_model, old_field)
        if excluding:
            raise UnsafeOperationError(exclusion_refusal(self.model_name, self.name, old_type, new_type, excluding))
        if new_field.primary_key or old_field.primary_key:
            raise UnsafeOperationError(
                f"Changing the type of primary key {table}.{column} needs its foreign keys moved too; "
                f"use ChangePrimaryKeyToBigint for int -> bigint, or plan the change by hand."
            )
        connection = schema_editor.connection
        if not collecting(schema_editor) and not catalog.column_exists(connection, table, column):
            if catalog.column_exists(connection, table, shadow):
                raise UnsafeOperationError(f"{table}.{column} is missing but {shadow} exists: an interrupted "
                                           f"contract step; run migrate_contract again to finish it.")
        progress = f"{table}.cast.{column}"
        to_type = cast_type(new_type)
        cast = f"CAST({sql.q(column)} AS {to_type})"

        def uncastable(exc):
            self._refuse_uncastable(schema_editor, table, column, shadow, old_type, new_type, exc)

        shadow_field = shadow_field_of(new_field, self.name, new_model, shadow)
        background = self.copies_in_background(schema_editor, table)
        plan = [forget_stale_progress(table, shadow, progress),
                *add_plain_column(schema_editor, new_model, new_field, shadow),
                *install_trigger(schema_editor, table, "cast", column, shadow, to_type, version=self.trigger_version),
                *copy_rows(table, shadow, cast, differs(sql.q(shadow), cast), progress,
                           on_error=[(DataError, uncastable)], background=background),
                *build_field_indexes(schema_editor, new_model, shadow_field),
                *mirror.build(schema_editor, new_model, new_field, shadow, column, meta=True)]
        # NOT NULL carries over only if the old column had it: otherwise old
        # code may still write NULL (the contract step sets it later). After
        # a background copy the contract step sets it too, once the copy is done.
        if not new_field.null and not old_field.null and not background:
            plan += set_not_null(schema_editor, table, shadow, model_name=self.model_name, what=self.describe())
        return plan

    def _rebuild_like_index(self, schema_editor, old_model, old_field, new_model, new_field):
        """varchar -> text keeps the ``_like`` index's varchar_pattern_ops; Django's has text_pattern_ops.

        Rebuilt concurrently under the same name (LIKE queries fall back to
        a scan in between; nothing blocks).
        """
        old_like = like_index_statement(schema_editor, old_model, old_field)
        new_like = like_index_statement(schema_editor, new_model, new_field)
        if old_like is None or new_like is None or str(old_like) == str(new_like):
            return []
        name = statement_name(new_like)
        table = table_of(new_model)
        if not collecting(schema_editor):
            current = catalog.index_definition(schema_editor.connection, name)
            opclass = "text_pattern_ops" if "text_pattern_ops" in str(new_like) else "varchar_pattern_ops"
            if current and opclass in current:
                return []  # already rebuilt (a re-run)
        return [sql.drop_index_concurrently(name, table),
                sql.create_index_concurrently(new_like, name, table).but(
                    label=f"rebuild {name} for the new type concurrently")]

    def _refuse_uncastable(self, schema_editor, table, column, shadow, old_type, new_type, exc):
        """Stop with the offending row named; take the trigger out so writes keep working.

        While the cast trigger is installed, any write of a value that does
        not cast fails, so it must not stay behind a failed expand. The
        shadow column stays (harmless, nullable); the re-run copies from the
        start again (rows written meanwhile had no trigger), skipping rows
        whose copy is already equal.
        """
        sample = first_uncastable_row(schema_editor.connection, table, column, shadow, new_type)
        run(schema_editor, drop_trigger(schema_editor, table, "cast", column, shadow), label=self.describe())
        # Rows written while no trigger runs are not copied: start the copy over.
        backfill.forget(schema_editor.connection, f"{table}.cast.{column}")
        where = f"row with primary key {sample[0]} holds {sample[1]!r}" if sample else f"a row failed: {exc}"
        raise UnsafeOperationError(
            f"Cannot change {table}.{column} from {old_type} to {new_type}: {where}, which does not cast "
            f"to {new_type}. Nothing irreversible happened: the old column is untouched and its trigger "
            f"was removed. Fix or clear such rows (e.g. UPDATE ... WHERE the value does not cast), or "
            f"cast with an explicit conversion in a data migration, then re-run the migration."
        ) from exc

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        new_model, old_model, new_field, old_field, new_type, old_type = self._types(
            schema_editor, from_state, to_state, app_label)
        table, column = table_of(new_model), new_field.column
        if in_place_type_change(old_type, new_type) and old_type != new_type:
            return [*self._narrow_back(table, column, new_type, old_type),
                    *_comment_change(table, column, new_field, old_field)]
        shadow = shadow_column(column)
        return undo_copy(schema_editor, table, "cast", column, shadow, f"{table}.cast.{column}")

    def _narrow_back(self, table, column, new_type, old_type):
        """Undo an in-place widening: a rewrite (or scan), allowed at most LOCK_TIMEOUT_MS.

        Narrowing back rewrites (or scans) the table under ACCESS EXCLUSIVE.
        The lock is taken first (bounded, retried), then the rewrite gets at
        most the lock timeout: the stall stays within twice the lock timeout,
        and a table too big for that is refused with the safe route.
        """
        budget_ms = int(conf.lock_timeout_ms)

        def too_slow(exc):
            raise UnsafeOperationError(
                f"Reversing the type change of {table}.{column} ({new_type} back to {old_type}) "
                f"rewrites the table under ACCESS EXCLUSIVE, and it did not finish within "
                f"{budget_ms} ms, so it was cancelled: every query on the table would have "
                f"waited for it. Nothing changed; the column is still {new_type}. Safe route: "
                f"keep {new_type} (it accepts every old value), or change it back with a new "
                f"forward migration (ChangeTypeViaCopy to {old_type}: shadow column, trigger, "
                f"batched backfill, then FinishChangeTypeViaCopy in contract)."
            ) from exc

        return [Transaction(f"change type back to {old_type}", [
            sql.lock_table(table),
            sql.statement_budget(budget_ms),
            sql.change_type_rewriting(table, column, old_type, budget_ms),
        ], on_error=[(QUERY_CANCELED, too_slow)])]

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        return name, args, self.with_background(self.with_trigger_version(kwargs))

    def describe(self):
        return f"Change the type of {self.model_name}.{self.name} (in place if possible, else via a shadow column)"

    @property
    def migration_name_fragment(self):
        return f"alter_{self.model_name_lower}_{self.name_lower}_type"


class FinishChangeTypeViaCopy(StageArgument, StandaloneOperation, FieldOperation):
    """Contract half of a type change: swap the shadow column in, in one short transaction.

    Indexes built on the shadow column are renamed to the names Django gives
    the field's indexes, so later plain migrations find them. The old-typed
    column is archived (``pg.archive``); reversing swaps it back in
    (``pg.archive_reverse``), and without an archive the reverse is refused.
    """

    stage = Stage.CONTRACT
    reversible = True  # through the archive of the old column (pg.archive_reverse)
    #: Generated migrations leave it outside a transaction so that indexes
    #: the column gained since the expand can still be built concurrently;
    #: older files (atomic) keep working and refuse only when one is missing.
    prefers_non_atomic = True

    def __init__(self, model_name, name, field, stage=None):
        # stage="expand" when the new type holds every value the old code
        # writes: both versions can then share the swapped column.
        FieldOperation.__init__(self, model_name, name, field)
        self.set_stage(stage)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        table, column = table_of(model), field.column
        shadow = shadow_column(column)
        connection = schema_editor.connection
        live = not collecting(schema_editor)
        if live and not catalog.column_exists(connection, table, shadow):
            yield Call("swap the shadow column in",
                       lambda c: Skipped("no shadow column: changed in place, or already swapped"))
            return
        if live:
            yield from self._complete_mirrors(schema_editor, model, field, shadow, column)
        progress = f"{table}.cast.{column}"
        if live:
            to_type = cast_type(field.db_parameters(connection)["type"])
            yield require_copy_complete(self.describe(), table, "cast", column, shadow, progress)
            yield require_columns_agree(self.describe(), table, column, shadow,
                                        differs(sql.q(shadow), f"CAST({sql.q(column)} AS {to_type})"))
            if not field.null and not catalog.column_info(connection, table, column)["nullable"]:
                # Left out by an expand whose copy ran in the background.
                yield from deferred_not_null(schema_editor, table, shadow, what=self.describe())
        # Built now, after the mirrors above exist: the swap renames them.
        statements = [
            *drop_trigger_statements(schema_editor, table, "cast", column, shadow),
            *archive.column_statements(schema_editor, table, column, app_label=app_label,  # hook: archive
                                       reason="type-change", shadow=False),
            sql.rename_column(table, shadow, column),
        ]
        for suffix in ("", "_like", "_uniq"):
            temporary = schema_editor._create_index_name(table, [shadow], suffix=suffix)
            final = schema_editor._create_index_name(table, [column], suffix=suffix)
            if not live or catalog.index_state(connection, temporary):
                statements.append(sql.rename_index(temporary, final, table))
        statements += mirror.swap_statements(schema_editor, model, field, shadow, column)
        if not field.has_db_default() and self.stage is Stage.EXPAND and live:
            # Old code still runs after an expand-time swap: the database
            # default it relies on moves to the new column (DropColumnDefault
            # removes it at contract when the new field has none).
            old_default = catalog.column_info(connection, table, column)["default"]
            if old_default is not None and not old_default.startswith("nextval("):
                statements.append(sql.set_default(table, column, old_default))
        if field.has_db_default():
            default_sql, params = schema_editor.db_default_sql(field)
            statements.append(sql.set_default(table, column, default_sql, params))
        yield Transaction("swap the shadow column in", statements)
        yield archive.drop_set_aside_indexes()
        # A later type change of the same column starts its copy afresh.
        yield forget_progress(progress)

    def _complete_mirrors(self, schema_editor, model, field, shadow, column):
        """Build on the shadow what the column gained since the expand (an index added later, say).

        Everything on the old column goes with it at the swap, so whatever
        the models ask for must be on the shadow first. Outside a transaction
        the missing pieces are built (concurrently, re-runnable); inside one
        that cannot be done, so the swap is refused rather than losing them.
        """
        missing = [item.final for item in mirror.plan(schema_editor, model, field, shadow, column, meta=True)
                   if not (catalog.index_state(schema_editor.connection, item.temporary)
                           or catalog.constraint_state(schema_editor.connection, table_of(model),
                                                       item.temporary))]
        if not missing:
            return []
        if schema_editor.connection.in_atomic_block:
            raise UnsafeOperationError(
                f"{self.describe()}: refused, {', '.join(missing)} would be lost with the old column: they are not "
                f"yet rebuilt on {shadow}, and building them concurrently cannot happen inside a transaction. Set "
                f"atomic = False on this migration and run migrate_contract again.")
        shadow_field = shadow_field_of(field, self.name, model, shadow)
        return [*build_field_indexes(schema_editor, model, shadow_field),
                *mirror.build(schema_editor, model, field, shadow, column, meta=True)]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(from_state, app_label, self.model_name)
        return archive.swap_back_plan(self, schema_editor, model, model._meta.get_field(self.name),  # hook
                                      app_label=app_label)

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name, "field": self.field}

    def describe(self):
        return f"Finish changing the type of {self.model_name}.{self.name}: swap the new column in"

    @property
    def migration_name_fragment(self):
        return f"finish_alter_{self.model_name_lower}_{self.name_lower}_type"

