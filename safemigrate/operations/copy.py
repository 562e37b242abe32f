"""Renames and type changes through a copy kept in step by triggers.

Renaming or retyping a column in place breaks the code that still uses the
old name, or rewrites the table under ACCESS EXCLUSIVE. Instead, expand adds
the target column next to the old one, installs a BEFORE INSERT OR UPDATE
trigger that keeps both in step whichever code version writes, backfills
the rows that existed before the trigger (in resumable batches), and builds
the indexes the target needs CONCURRENTLY. Contract, once no old code runs,
drops the trigger and the old column in one short, lock-bounded transaction.
"""

from django.db import DataError
from django.db.migrations.operations.fields import AlterField, FieldOperation

from ..exceptions import UnsafeOperationError
from ..pg import backfill, catalog, mirror, triggers
from ..pg.copy_steps import (  # noqa: F401  (in_place_type_change, shadow_column: public helpers)
    _column_for,
    add_plain_column,
    cast_type,
    differs,
    drop_column_statements,
    forget_shadow_progress,
    build_field_indexes,
    copy_rows,
    drop_trigger,
    first_uncastable_row,
    forget_stale_progress,
    in_place_type_change,
    install_trigger,
    require_columns_agree,
    require_copy_complete,
    shadow_column,
    undo_copy,
    with_trigger_version,
)
from ..pg.ddl import run_ddl
from ..pg.reporting import step
from ..pg.schema import (
    build_index_concurrently,
    collecting,
    drop_index_concurrently,
    like_index_statement,
    model_of,
    qn,
    statement_name,
    table_of,
)
from ..pg.steps import set_not_null
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation
from .columns import refuse_reverse_in_transaction


class RenameViaCopy(StandaloneOperation, FieldOperation):
    """Expand half of a field rename: both names work until contract.

    The old code keeps reading and writing the old column; the new code uses
    the new one; the trigger copies every write across. NOT NULL and the
    field's own indexes are carried over to the new column (concurrently /
    through a validated CHECK). Indexes and constraints declared in
    ``Meta`` that mention the field are not copied: rename those separately.
    """

    requires_non_atomic = True
    lock_level = "SHARE ROW EXCLUSIVE instant (trigger); SHARE UPDATE EXCLUSIVE for index builds"

    def __init__(self, model_name, old_name, new_name, trigger_version=1):
        self.old_name = old_name
        self.new_name = new_name
        self.trigger_version = trigger_version
        FieldOperation.__init__(self, model_name, new_name)

    @property
    def old_name_lower(self):
        return self.old_name.lower()

    def state_forwards(self, app_label, state):
        state.rename_field(app_label, self.model_name_lower, self.old_name, self.new_name)
        # Django keeps the old column via db_column on a plain rename; the copy
        # lives under the new name.
        model_state = state.models[app_label, self.model_name_lower]
        field = model_state.fields[self.new_name]
        if field.db_column == self.old_name or field.db_column == _column_for(field, self.old_name):
            field = field.clone()
            field.db_column = None
            state.alter_field(app_label, self.model_name_lower, self.new_name, field, True)

    def columns(self, old_model, new_model):
        return (old_model._meta.get_field(self.old_name).column, new_model._meta.get_field(self.new_name).column)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        old_model = model_of(from_state, app_label, self.model_name)
        new_model = model_of(to_state, app_label, self.model_name)
        old_field = old_model._meta.get_field(self.old_name)
        new_field = new_model._meta.get_field(self.new_name)
        old, new = old_field.column, new_field.column
        table = table_of(new_model)
        if not collecting(schema_editor) and not catalog.column_exists(schema_editor.connection, table, old):
            raise UnsafeOperationError(
                f"Cannot rename {table}.{old} to {new}: column {old} does not exist. If a plain RenameField "
                f"already ran, this migration is not needed; otherwise check the model state."
            )
        forget_stale_progress(schema_editor, table, new, f"{table}.rename.{old}.{new}")
        add_plain_column(self, schema_editor, new_model, new_field, new)
        install_trigger(self, schema_editor, table, "rename", old, new)
        copy_rows(self, schema_editor, table,
                  f"{qn(schema_editor, new)} = {qn(schema_editor, old)}",
                  differs(qn(schema_editor, new), qn(schema_editor, old), self.trigger_version),
                  f"{table}.rename.{old}.{new}")
        build_field_indexes(self, schema_editor, new_model, new_field)
        mirror.build(self, schema_editor, new_model, new_field, new, new, meta=False)
        if not new_field.null:
            set_not_null(self, schema_editor, new_model, new_field)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        new_model = model_of(from_state, app_label, self.model_name)
        old_model = model_of(to_state, app_label, self.model_name)
        old, new = self.columns(old_model, new_model)
        table = table_of(new_model)
        undo_copy(self, schema_editor, table, "rename", old, new, f"{table}.rename.{old}.{new}")

    def deconstruct_kwargs(self):
        return with_trigger_version(
            {"model_name": self.model_name, "old_name": self.old_name, "new_name": self.new_name}, self)

    def describe(self):
        return f"Rename {self.model_name}.{self.old_name} to {self.new_name} via a copy kept in step by a trigger"

    @property
    def migration_name_fragment(self):
        return f"rename_{self.model_name_lower}_{self.old_name_lower}_{self.new_name.lower()}"

    def references_field(self, model_name, name, app_label):
        return self.references_model(model_name, app_label) and name.lower() in (
            self.old_name_lower, self.new_name.lower())


class FinishRenameViaCopy(StandaloneOperation, FieldOperation):
    """Contract half of a rename: drop the trigger and the old column."""

    stage = Stage.CONTRACT
    lock_level = "ACCESS EXCLUSIVE (instant, bounded by lock_timeout)"

    def __init__(self, model_name, old_name, new_name):
        self.old_name = old_name
        self.new_name = new_name
        FieldOperation.__init__(self, model_name, new_name)

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.new_name)
        old, new = _column_for(field, self.old_name), field.column
        table = table_of(model)
        connection = schema_editor.connection
        progress = f"{table}.rename.{old}.{new}"
        if not collecting(schema_editor) and catalog.column_exists(connection, table, old):
            require_copy_complete(self, connection, table, "rename", old, new, progress)
            require_columns_agree(self, schema_editor, table, old, new,
                                  differs(qn(schema_editor, new), qn(schema_editor, old), 2))
        # One transaction: the old column never exists without its trigger,
        # and the new one gets its database default as the old one goes.
        default = mirror.db_default_statement(schema_editor, model, field)
        with step(self.describe(), "drop trigger and old column") as record:
            run_ddl(
                schema_editor,
                [*triggers.drop_sql(schema_editor.quote_name, table, "rename", old, new),
                 *drop_column_statements(schema_editor, table, old),
                 *([default] if default else [])],
                table=table,
                record=record,
            )
        forget_shadow_progress(schema_editor, table, old)
        if not collecting(schema_editor):
            backfill.forget(connection, progress)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        # Issue 10: the copy back runs in batches that each commit; inside a transaction the
        # new column's ACCESS EXCLUSIVE would be held through the whole backfill.
        refuse_reverse_in_transaction(self, schema_editor, "copies every row back into the old column")
        model = model_of(from_state, app_label, self.model_name)
        field = model._meta.get_field(self.new_name)
        old, new = _column_for(field, self.old_name), field.column
        table = table_of(model)
        add_plain_column(self, schema_editor, model, field, old)
        install_trigger(self, schema_editor, table, "rename", old, new)
        copy_rows(self, schema_editor, table, f"{qn(schema_editor, old)} = {qn(schema_editor, new)}",
                  f"{qn(schema_editor, old)} IS DISTINCT FROM {qn(schema_editor, new)}",
                  f"{table}.unrename.{old}.{new}")
        if not collecting(schema_editor):
            backfill.forget(schema_editor.connection, f"{table}.unrename.{old}.{new}")

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "old_name": self.old_name, "new_name": self.new_name}

    def describe(self):
        return f"Finish renaming {self.model_name}.{self.old_name} to {self.new_name}: drop the old column"

    @property
    def migration_name_fragment(self):
        return f"finish_rename_{self.model_name_lower}_{self.old_name.lower()}_{self.new_name.lower()}"


class ChangeTypeViaCopy(SafeOperation, AlterField):
    """Expand half of a column type change.

    In place (instant) when PostgreSQL needs neither a rewrite nor a scan
    (varchar widening, varchar → text, numeric precision increase). Otherwise
    a shadow column of the new type is kept equal to ``CAST(column AS new)``
    by a trigger and backfilled; its indexes are built concurrently. During
    the rollout both code versions write the existing column (old type); the
    contract step swaps the shadow in.
    """

    requires_non_atomic = True
    lock_level = "ACCESS EXCLUSIVE instant (column, trigger); SHARE UPDATE EXCLUSIVE for index builds"

    def __init__(self, model_name, name, field, trigger_version=1):
        self.trigger_version = trigger_version
        super().__init__(model_name, name, field)

    def _types(self, schema_editor, from_state, to_state, app_label):
        old_model = model_of(from_state, app_label, self.model_name)
        new_model = model_of(to_state, app_label, self.model_name)
        old_field = old_model._meta.get_field(self.name)
        new_field = new_model._meta.get_field(self.name)
        connection = schema_editor.connection
        return (old_model, new_model, old_field, new_field,
                old_field.db_parameters(connection)["type"], new_field.db_parameters(connection)["type"])

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        old_model, new_model, old_field, new_field, old_type, new_type = self._types(
            schema_editor, from_state, to_state, app_label)
        table, column = table_of(new_model), new_field.column
        if old_type == new_type:
            return
        if in_place_type_change(old_type, new_type):
            with step(self.describe(), f"change type in place to {new_type} (no rewrite)") as record:
                run_ddl(schema_editor,
                        [f"ALTER TABLE {qn(schema_editor, table)} ALTER COLUMN {qn(schema_editor, column)} TYPE {new_type}"],
                        table=table, record=record)
            self._rebuild_like_index(schema_editor, old_model, old_field, new_model, new_field)
            return
        shadow = shadow_column(column)
        if new_field.primary_key or old_field.primary_key:
            raise UnsafeOperationError(
                f"Changing the type of primary key {table}.{column} needs its foreign keys moved too; "
                f"use ChangePrimaryKeyToBigint for int -> bigint, or plan the change by hand."
            )
        if not collecting(schema_editor) and not catalog.column_exists(schema_editor.connection, table, column):
            if catalog.column_exists(schema_editor.connection, table, shadow):
                raise UnsafeOperationError(f"{table}.{column} is missing but {shadow} exists: an interrupted "
                                           f"contract step; run migrate_contract again to finish it.")
        forget_stale_progress(schema_editor, table, shadow, f"{table}.cast.{column}")
        add_plain_column(self, schema_editor, new_model, new_field, shadow)
        to_type = cast_type(new_type, self.trigger_version)
        install_trigger(self, schema_editor, table, "cast", column, shadow, to_type)
        q_col, q_shadow = qn(schema_editor, column), qn(schema_editor, shadow)
        try:
            copy_rows(self, schema_editor, table, f"{q_shadow} = CAST({q_col} AS {to_type})",
                      differs(q_shadow, f"CAST({q_col} AS {to_type})", self.trigger_version),
                      f"{table}.cast.{column}")
        except DataError as exc:
            self._refuse_uncastable(schema_editor, table, column, shadow, old_type, new_type, exc)
        shadow_field = new_field.clone()
        shadow_field.set_attributes_from_name(self.name)
        shadow_field.model = new_model
        shadow_field.column = shadow
        shadow_field.db_column = shadow
        build_field_indexes(self, schema_editor, new_model, shadow_field)
        mirror.build(self, schema_editor, new_model, new_field, shadow, column, meta=True)
        # NOT NULL carries over only if the old column had it: otherwise old
        # code may still write NULL (the contract step sets it later).
        if not new_field.null and not old_field.null:
            set_not_null(self, schema_editor, new_model, shadow_field)

    def _rebuild_like_index(self, schema_editor, old_model, old_field, new_model, new_field):
        """varchar -> text keeps the ``_like`` index's varchar_pattern_ops; Django's has text_pattern_ops.

        Rebuilt concurrently under the same name (LIKE queries fall back to
        a scan in between; nothing blocks).
        """
        old_like = like_index_statement(schema_editor, old_model, old_field)
        new_like = like_index_statement(schema_editor, new_model, new_field)
        if old_like is None or new_like is None or str(old_like) == str(new_like):
            return
        name = statement_name(new_like)
        connection = schema_editor.connection
        if not collecting(schema_editor) and catalog.index_state(connection, name):
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [qn(schema_editor, name)])
                current = cursor.fetchone()[0]
            opclass = "text_pattern_ops" if "text_pattern_ops" in str(new_like) else "varchar_pattern_ops"
            if opclass in current:
                return  # already rebuilt (a re-run)
        with step(self.describe(), f"rebuild {name} for the new type concurrently") as record:
            drop_index_concurrently(schema_editor, name)
            build_index_concurrently(schema_editor, new_like, name, record)

    def _refuse_uncastable(self, schema_editor, table, column, shadow, old_type, new_type, exc):
        """Stop with the offending row named; take the trigger out so writes keep working.

        While the cast trigger is installed, any write of a value that does
        not cast fails, so it must not stay behind a failed expand. The
        shadow column stays (harmless, nullable); the re-run copies from the
        start again (rows written meanwhile had no trigger), skipping rows
        whose copy is already equal.
        """
        sample = first_uncastable_row(schema_editor, table, column, shadow, new_type)
        drop_trigger(self, schema_editor, table, "cast", column, shadow)
        # Rows written while no trigger runs are not copied: start the copy over.
        backfill.forget(schema_editor.connection, f"{table}.cast.{column}")
        where = f"row with primary key {sample[0]} holds {sample[1]!r}" if sample else f"a row failed: {exc}"
        raise UnsafeOperationError(
            f"Cannot change {table}.{column} from {old_type} to {new_type}: {where}, which does not cast "
            f"to {new_type}. Nothing irreversible happened: the old column is untouched and its trigger "
            f"was removed. Fix or clear such rows (e.g. UPDATE ... WHERE the value does not cast), or "
            f"cast with an explicit conversion in a data migration, then re-run the migration."
        ) from exc

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        new_model, old_model, new_field, old_field, new_type, old_type = self._types(
            schema_editor, from_state, to_state, app_label)
        table, column = table_of(new_model), new_field.column
        if in_place_type_change(old_type, new_type) and old_type != new_type:
            # Issue 10: narrowing back rewrites (or scans) the table under ACCESS EXCLUSIVE. Take the
            # lock first (bounded, retried), then give the rewrite at most LOCK_TIMEOUT_MS: the stall
            # stays within twice the lock timeout, and a table too big for that is refused.
            from django.db import OperationalError

            from ..conf import conf
            from ..pg.ddl import sqlstate

            budget_ms = int(conf.lock_timeout_ms)
            quoted = qn(schema_editor, table)
            with step(self.describe(), f"change type back to {old_type}") as record:
                try:
                    run_ddl(schema_editor,
                            [f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE",
                             ("SELECT set_config('statement_timeout', %s, true)", [f"{budget_ms}ms"]),
                             f"ALTER TABLE {quoted} ALTER COLUMN {qn(schema_editor, column)} TYPE {old_type}"],
                            table=table, record=record)
                except OperationalError as exc:
                    if sqlstate(exc) != "57014":  # query_canceled: the statement timeout
                        raise
                    raise UnsafeOperationError(
                        f"Reversing the type change of {table}.{column} ({new_type} back to {old_type}) "
                        f"rewrites the table under ACCESS EXCLUSIVE, and it did not finish within "
                        f"{budget_ms} ms, so it was cancelled: every query on the table would have "
                        f"waited for it. Nothing changed; the column is still {new_type}. Safe route: "
                        f"keep {new_type} (it accepts every old value), or change it back with a new "
                        f"forward migration (ChangeTypeViaCopy to {old_type}: shadow column, trigger, "
                        f"batched backfill, then FinishChangeTypeViaCopy in contract)."
                    ) from exc
            return
        shadow = shadow_column(column)
        undo_copy(self, schema_editor, table, "cast", column, shadow, f"{table}.cast.{column}")

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        return name, args, with_trigger_version(kwargs, self)

    def describe(self):
        return f"Change the type of {self.model_name}.{self.name} (in place if possible, else via a shadow column)"

    @property
    def migration_name_fragment(self):
        return f"alter_{self.model_name_lower}_{self.name_lower}_type"


class FinishChangeTypeViaCopy(StandaloneOperation, FieldOperation):
    """Contract half of a type change: swap the shadow column in, in one short transaction.

    Indexes built on the shadow column are renamed to the names Django gives
    the field's indexes, so later plain migrations find them. Irreversible:
    the old-typed column is gone (roll back with a new forward migration).
    """

    stage = Stage.CONTRACT
    reversible = False
    lock_level = "ACCESS EXCLUSIVE (instant swap, bounded by lock_timeout)"
    #: Generated migrations leave it outside a transaction so that indexes
    #: the column gained since the expand can still be built concurrently;
    #: older files (atomic) keep working and refuse only when one is missing.
    prefers_non_atomic = True

    def __init__(self, model_name, name, field, stage=None):
        FieldOperation.__init__(self, model_name, name, field)
        if stage is not None:
            # "expand" when the new type holds every value the old code
            # writes: both versions can then share the swapped column.
            self.stage = Stage(stage)

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        table, column = table_of(model), field.column
        shadow = shadow_column(column)
        connection = schema_editor.connection
        if not collecting(schema_editor) and catalog.column_exists(connection, table, shadow):
            self._complete_mirrors(schema_editor, model, field, shadow, column)
        with step(self.describe(), "swap the shadow column in") as record:
            if not collecting(schema_editor) and not catalog.column_exists(connection, table, shadow):
                record.skipped = True
                record.detail = "no shadow column: changed in place, or already swapped"
                return
            if not collecting(schema_editor):
                require_copy_complete(self, connection, table, "cast", column, shadow, f"{table}.cast.{column}")
                require_columns_agree(
                    self, schema_editor, table, column, shadow,
                    differs(qn(schema_editor, shadow), f"CAST({qn(schema_editor, column)} AS "
                            f"{cast_type(field.db_parameters(connection)['type'], 2)})", 2))
            q_table = qn(schema_editor, table)
            statements = [
                *triggers.drop_sql(schema_editor.quote_name, table, "cast", column, shadow),
                f"ALTER TABLE {q_table} DROP COLUMN IF EXISTS {qn(schema_editor, column)}",
                f"ALTER TABLE {q_table} RENAME COLUMN {qn(schema_editor, shadow)} TO {qn(schema_editor, column)}",
            ]
            for suffix in ("", "_like", "_uniq"):
                temporary = schema_editor._create_index_name(table, [shadow], suffix=suffix)
                final = schema_editor._create_index_name(table, [column], suffix=suffix)
                if collecting(schema_editor) or catalog.index_state(connection, temporary):
                    statements.append(f"ALTER INDEX IF EXISTS {qn(schema_editor, temporary)} RENAME TO {qn(schema_editor, final)}")
            statements += mirror.swap_statements(schema_editor, model, field, shadow, column)
            if not field.has_db_default() and self.stage is Stage.EXPAND and not collecting(schema_editor):
                # Old code still runs after an expand-time swap: the database
                # default it relies on moves to the new column (DropColumnDefault
                # removes it at contract when the new field has none).
                old_default = catalog.column_info(connection, table, column)["default"]
                if old_default is not None and not old_default.startswith("nextval("):
                    statements.append(f"ALTER TABLE {q_table} ALTER COLUMN {qn(schema_editor, column)} "
                                      f"SET DEFAULT {old_default}")
            if field.has_db_default():
                default_sql, params = schema_editor.db_default_sql(field)
                statements.append((f"ALTER TABLE {q_table} ALTER COLUMN {qn(schema_editor, column)} SET DEFAULT {default_sql}", params))
            run_ddl(schema_editor, statements, table=table, record=record)
        if not collecting(schema_editor):
            # A later type change of the same column starts its copy afresh.
            backfill.forget(connection, f"{table}.cast.{column}")

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
            return
        if schema_editor.connection.in_atomic_block:
            raise UnsafeOperationError(
                f"{self.describe()}: refused, {', '.join(missing)} would be lost with the old column: they are not "
                f"yet rebuilt on {shadow}, and building them concurrently cannot happen inside a transaction. Set "
                f"atomic = False on this migration and run migrate_contract again.")
        shadow_field = field.clone()
        shadow_field.set_attributes_from_name(self.name)
        shadow_field.model = model
        shadow_field.column = shadow_field.db_column = shadow
        build_field_indexes(self, schema_editor, model, shadow_field)
        mirror.build(self, schema_editor, model, field, shadow, column, meta=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        raise NotImplementedError(f"{self.describe()} cannot be reversed: the column with the old type is gone.")

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "name": self.name, "field": self.field}
        if self.stage is not Stage.CONTRACT:
            kwargs["stage"] = str(self.stage)
        return kwargs

    def describe(self):
        return f"Finish changing the type of {self.model_name}.{self.name}: swap the new column in"

    @property
    def migration_name_fragment(self):
        return f"finish_alter_{self.model_name_lower}_{self.name_lower}_type"
