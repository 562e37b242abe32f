"""Renaming a column through a copy kept in step by triggers.

Renaming a column in place breaks the code that still uses the old name.
Instead, expand adds the column under its new name next to the old one,
installs a BEFORE INSERT OR UPDATE trigger that keeps both in step
whichever code version writes, backfills the rows that existed before the
trigger (in resumable batches), and builds what the old column carries
(indexes concurrently, constraints NOT VALID then validated). Contract,
once no old code runs, drops the trigger and the old column in one short,
lock-bounded transaction.
"""

from django.db.migrations.operations.fields import FieldOperation

from ..exceptions import UnsafeOperationError
from ..pg import archive, catalog, mirror, sql, triggers
from ..pg.copy_steps import (
    add_plain_column,
    build_field_indexes,
    column_for,
    copy_rows,
    deferred_not_null,
    differs,
    forget_progress,
    forget_shadow_progress,
    forget_stale_progress,
    install_trigger,
    keep_like_index_name,
    require_columns_agree,
    require_copy_complete,
    restore_like_index_name,
    undo_copy,
)
from ..pg.schema import collecting, field_variant, model_of, table_of
from ..pg.statements import Transaction
from ..pg.steps import set_not_null
from ..stages import Stage
from .background_argument import BackgroundArgument
from .base import StandaloneOperation
from .columns import refuse_reverse_in_transaction
from .triggered import TriggerVersion


class RenameViaCopy(BackgroundArgument, TriggerVersion, StandaloneOperation, FieldOperation):
    """Expand half of a field rename: both names work until contract.

    The old code keeps reading and writing the old column; the new code uses
    the new one; the trigger copies every write across. NOT NULL and the
    field's own indexes are carried over to the new column (concurrently /
    through a validated CHECK). Indexes and constraints declared in
    ``Meta`` that mention the field are not copied: rename those separately.
    With ``background`` the copy of the existing rows is enqueued for
    ``manage.py backfills run`` and NOT NULL waits for the contract step.
    """

    requires_non_atomic = True

    def __init__(self, model_name, old_name, new_name, trigger_version=1, background=None, field=None):
        self.old_name = old_name
        self.new_name = new_name
        self.trigger_version = trigger_version
        #: Copy the rows in the background (True), inside migrate (False), or as BACKGROUND_MIN_ROWS says (None).
        self.background = background
        #: The field as it ends up, when more than its name changes: a new
        #: ``db_column`` renames the column while the field keeps its name.
        self.renamed_field = field
        FieldOperation.__init__(self, model_name, new_name)

    @property
    def old_name_lower(self):
        return self.old_name.lower()

    def state_forwards(self, app_label, state):
        if self.renamed_field is not None:
            if self.old_name != self.new_name:
                state.rename_field(app_label, self.model_name_lower, self.old_name, self.new_name)
            state.alter_field(app_label, self.model_name_lower, self.new_name, self.renamed_field, True)
            return
        state.rename_field(app_label, self.model_name_lower, self.old_name, self.new_name)
        # Django keeps the old column via db_column on a plain rename; the copy
        # lives under the new name.
        model_state = state.models[app_label, self.model_name_lower]
        field = model_state.fields[self.new_name]
        if field.db_column == self.old_name or field.db_column == column_for(field, self.old_name):
            field = field.clone()
            field.db_column = None
            state.alter_field(app_label, self.model_name_lower, self.new_name, field, True)

    def columns(self, old_model, new_model):
        return (old_model._meta.get_field(self.old_name).column, new_model._meta.get_field(self.new_name).column)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        old_model = model_of(from_state, app_label, self.model_name)
        new_model = model_of(to_state, app_label, self.model_name)
        new_field = new_model._meta.get_field(self.new_name)
        old, new = old_model._meta.get_field(self.old_name).column, new_field.column
        table = table_of(new_model)
        if not collecting(schema_editor) and not catalog.column_exists(schema_editor.connection, table, old):
            raise UnsafeOperationError(
                f"Cannot rename {table}.{old} to {new}: column {old} does not exist. If a plain RenameField "
                f"already ran, this migration is not needed; otherwise check the model state."
            )
        progress = f"{table}.rename.{old}.{new}"
        background = self.copies_in_background(schema_editor, table)
        plan = [forget_stale_progress(table, new, progress),
                *add_plain_column(schema_editor, new_model, new_field, new),
                *install_trigger(schema_editor, table, "rename", old, new, version=self.trigger_version),
                *copy_rows(table, new, sql.q(old), differs(sql.q(new), sql.q(old)), progress, background=background),
                *build_field_indexes(schema_editor, new_model, new_field),
                # A field that keeps its name (a db_column change) keeps its Meta
                # indexes and constraints in Django's eyes: nothing else rebuilds them.
                *mirror.build(schema_editor, new_model, new_field, new, new, meta=self._moves())]
        if not new_field.null and not background:  # else the contract step sets it, once the copy is done
            plan += set_not_null(schema_editor, table, new, model_name=self.model_name, what=self.describe())
        return plan

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        new_model = model_of(from_state, app_label, self.model_name)
        old_model = model_of(to_state, app_label, self.model_name)
        old, new = self.columns(old_model, new_model)
        table = table_of(new_model)
        return undo_copy(schema_editor, table, "rename", old, new, f"{table}.rename.{old}.{new}")

    def _moves(self):
        """A field keeping its name on another column (``db_column`` changed), rather than a rename."""
        return self.renamed_field is not None and self.old_name == self.new_name

    def deconstruct_kwargs(self):
        kwargs = self.with_background(self.with_trigger_version(
            {"model_name": self.model_name, "old_name": self.old_name, "new_name": self.new_name}))
        if self.renamed_field is not None:
            kwargs["field"] = self.renamed_field
        return kwargs

    def describe(self):
        if self._moves():
            return (f"Move {self.model_name}.{self.new_name} to column {self.renamed_field.db_column or self.new_name} "
                    f"via a copy kept in step by a trigger")
        return f"Rename {self.model_name}.{self.old_name} to {self.new_name} via a copy kept in step by a trigger"

    @property
    def migration_name_fragment(self):
        if self._moves():
            return f"move_{self.model_name_lower}_{self.new_name.lower()}_column"
        return f"rename_{self.model_name_lower}_{self.old_name_lower}_{self.new_name.lower()}"

    def references_field(self, model_name, name, app_label):
        return self.references_model(model_name, app_label) and name.lower() in (
            self.old_name_lower, self.new_name.lower())


class FinishRenameViaCopy(StandaloneOperation, FieldOperation):
    """Contract half of a rename: drop the trigger and archive the old column (``pg.archive``)."""

    stage = Stage.CONTRACT
    #: The copy back runs in batches that each commit; inside a transaction the
    #: new column's ACCESS EXCLUSIVE would be held through the whole backfill.
    reverse_requires_non_atomic = True

    def __init__(self, model_name, old_name, new_name, old_column=None):
        self.old_name = old_name
        self.new_name = new_name
        #: The old column, when it is not the one the old name gives (a ``db_column`` change).
        self.old_column = old_column
        FieldOperation.__init__(self, model_name, new_name)

    def _moves(self):
        return bool(self.old_column) and self.old_name == self.new_name

    def _columns(self, app_label, state):
        model = model_of(state, app_label, self.model_name)
        field = model._meta.get_field(self.new_name)
        return model, field, self.old_column or column_for(field, self.old_name), field.column

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model, field, old, new = self._columns(app_label, to_state)
        table = table_of(model)
        progress = f"{table}.rename.{old}.{new}"
        plan = []
        if not collecting(schema_editor) and catalog.column_exists(schema_editor.connection, table, old):
            plan += [require_copy_complete(self.describe(), table, "rename", old, new, progress),
                     require_columns_agree(self.describe(), table, old, new, differs(sql.q(new), sql.q(old)))]
            if not field.null:  # left out by an expand whose copy ran in the background
                plan += deferred_not_null(schema_editor, table, new, what=self.describe())
        # One transaction: the old column never exists without its trigger,
        # and the new one gets its database default as the old one goes.
        default = mirror.db_default_statement(schema_editor, model, field)
        # A moved field's Meta indexes and constraints were built on the new
        # column under temporary names; they take their names as the old ones go.
        renames = mirror.swap_statements(schema_editor, model, field, new, new) if self._moves() else []
        # After the old column is archived or dropped (its indexes' names are free then).
        renames += keep_like_index_name(schema_editor, model, field, old)
        pgid = triggers.trigger_id(table, "rename", old, new)
        plan += [
            Transaction("drop trigger and old column", [
                sql.drop_trigger(triggers.drop_trigger_sql(table, pgid), table, pgid), sql.drop_function(pgid),
                *archive.column_statements(schema_editor, table, old, app_label=app_label,  # hook: archive
                                           reason="rename"),
                *renames,
                *([default] if default else []),
            ]),
            archive.drop_set_aside_indexes(),
            forget_shadow_progress(table, old),
            forget_progress(progress),
        ]
        return plan

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        """Back to the expand state: the old column with all it carried then, kept in step again.

        The old column is re-created plain, the trigger installed, its
        database default moved back from the new column (which gets one only
        at contract), every row copied back in batches, and then what the old
        column carried during expand rebuilt without long locks: its indexes
        and unique constraint (concurrently), its CHECK and foreign key (NOT
        VALID, then validated), its ``unique_together`` entries, and NOT NULL
        (through a validated CHECK). The copy back is recorded under the
        expand's own progress name, so the contract can run again; reversing
        the expand after this gives plain Django's schema.
        """
        refuse_reverse_in_transaction(self, schema_editor, "copies every row back into the old column")
        model, field, old, new = self._columns(app_label, from_state)
        table = table_of(model)
        progress = f"{table}.rename.{old}.{new}"
        plan = [forget_stale_progress(table, old, progress),
                *add_plain_column(schema_editor, model, field, old),
                *install_trigger(schema_editor, table, "rename", old, new)]
        if field.has_db_default():
            with field_variant(field, column=old):
                default = mirror.db_default_statement(schema_editor, model, field)
            plan.append(Transaction(f"move the default back to {old}", [default, sql.drop_default(table, new)]))
        plan += copy_rows(table, old, sql.q(new), differs(sql.q(old), sql.q(new)), progress)
        plan += restore_like_index_name(schema_editor, model, field, new)
        with field_variant(field, column=old):
            plan += build_field_indexes(schema_editor, model, field)
        plan += mirror.build(schema_editor, model, field, old, old, meta=False)
        if not field.null:
            plan += set_not_null(schema_editor, table, old, model_name=self.model_name)
        return plan

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "old_name": self.old_name, "new_name": self.new_name}
        if self.old_column:
            kwargs["old_column"] = self.old_column
        return kwargs

    def describe(self):
        if self._moves():
            return f"Finish moving {self.model_name}.{self.new_name} off column {self.old_column}: drop the old column"
        return f"Finish renaming {self.model_name}.{self.old_name} to {self.new_name}: drop the old column"

    @property
    def migration_name_fragment(self):
        return f"finish_rename_{self.model_name_lower}_{self.old_name.lower()}_{self.new_name.lower()}"


