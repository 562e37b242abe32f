"""Renaming a column through a view: no row is copied, whatever the table's size.

Expand (``RenameFieldViaView`` for a field rename, ``RenameColumnViaView``
for a ``db_column`` change) opens a *rename window* in one short,
lock-bounded transaction: the table steps aside to a private name, its
column takes the new name, and a view under the table's name shows the
column under both names (``safemigrate.pg.views``). Each code version
writes only its own name, and PostgreSQL's automatically updatable views
pass every INSERT, UPDATE, DELETE, RETURNING, ON CONFLICT and
SELECT ... FOR UPDATE to the base table. Contract (``FinishRenameViaView``)
takes the old name away; with the last one the view goes and the table
gets its name back (one short transaction again).

While the window is open, everything else that sends DDL for the table
finds the base table through ``safemigrate.pg.windows``; the operations
here only open and close windows. Their plans are one ``Transaction`` each
(statements from ``pg.windows``, built with ``pg.sql``'s ``window_*``
builders), read from the catalog when the plan is built, right before
the runner executes it; a re-run finds the window already in its new shape
and reports the step as done.

Where a view cannot serve (``windows.why_not``: a partitioned table, other
views or rules on it, ...), ``RenameFieldViaView`` says why and renames
through a copy instead (``RenameViaCopy``: new column, dual-write trigger,
batched backfill); ``FinishRenameViaView`` finishes whichever ran. The
database decides at ``migrate`` time, so a file written against one
database never drifts on another.
"""

from django.db.migrations.operations.fields import AlterField, RenameField

from ..exceptions import UnsafeOperationError
from ..pg import catalog, checks, triggers, windows
from ..pg.reporting import current_report
from ..pg.schema import collecting, model_of, table_of
from ..pg.statements import Call, Skipped, Transaction
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation
from .rename_copy import FinishRenameViaCopy, RenameViaCopy


def _already(label, why):
    """A plan step for work an earlier run finished: the run report shows it skipped."""
    return Call(label, lambda connection: Skipped(why))


def open_window(schema_editor, table, old, new, fallback, state_columns):
    """The plan that opens (or widens) the window on ``table`` for ``old`` -> ``new``.

    ``fallback(reason)`` returns the plan to run instead when the database
    cannot serve a view, or when an earlier run already started the copy
    (its new column exists): a re-run never switches strategy halfway.
    """
    label = f"open the rename window on {table}: {old} -> {new} (no rows copied)"
    connection = schema_editor.connection
    if collecting(schema_editor):
        return [Transaction(label, windows.open_statements(connection, table, old, new, state_columns=state_columns))]
    shows = checks.WindowShows(table, old, new)
    if shows.holds(connection):
        return [_already(label, "the window is open")]
    if not catalog.column_exists(connection, table, old):
        raise UnsafeOperationError(
            f"Cannot rename {table}.{old} to {new}: column {old} does not exist. If a plain RenameField already "
            f"ran, this migration is not needed (fake it: migrate --fake); otherwise check the model state.")
    if catalog.column_exists(connection, table, new):
        return fallback(f"column {new} already exists on {table} (an earlier run started renaming through a copy)")
    reason = windows.why_not(connection, table, old)
    if reason:
        return fallback(reason)
    return [Transaction(label, windows.open_statements(connection, table, old, new), skip_if=shows)]


def undo_window(schema_editor, table, old, new):
    """The plan that takes ``old`` back (the column's name again); [] when the window does not show it."""
    connection = schema_editor.connection
    window = catalog.rename_window(connection, table)
    if window is None or old not in {alias for alias, _ in window.aliases}:
        return []
    return [Transaction(f"undo the rename window on {table}: {new} -> {old}",
                        windows.undo_open_statements(connection, table, old, new))]


class RenameFieldViaView(SafeOperation, RenameField):
    """Expand half of a field rename through a view (Django's ``RenameField`` state change).

    Non-atomic in generated migrations only so that the copy fallback
    (batched) can run; the window itself is one short transaction either way.
    """

    prefers_non_atomic = True

    def _columns(self, app_label, from_state, to_state):
        old_model = model_of(from_state, app_label, self.model_name)
        new_model = model_of(to_state, app_label, self.model_name)
        return (table_of(new_model), old_model._meta.get_field(self.old_name).column,
                new_model._meta.get_field(self.new_name).column,
                [f.column for f in old_model._meta.local_concrete_fields])

    def _copy(self):
        return RenameViaCopy(self.model_name, self.old_name, self.new_name, trigger_version=triggers.VERSION)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, old, new, columns = self._columns(app_label, from_state, to_state)
        if old == new:
            return []

        def fallback(reason):
            if schema_editor.connection.in_atomic_block:
                raise UnsafeOperationError(
                    f"{self.describe()}: a view cannot serve here ({reason}), and the fallback, a copy kept in step "
                    f"by a trigger and filled in batches, cannot run inside a transaction. Set atomic = False on "
                    f"this migration and run it again (nothing was changed).")
            current_report().warning(f"{self.describe()}: {reason}; renaming through a copy instead "
                                     f"(new column, dual-write trigger, batched backfill)")
            return self._copy().forwards_plan(app_label, schema_editor, from_state, to_state)

        return open_window(schema_editor, table, old, new, fallback, columns)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, old, new, _ = self._columns(app_label, to_state, from_state)
        if old == new or collecting(schema_editor):
            return []
        connection = schema_editor.connection
        undo = undo_window(schema_editor, table, old, new)
        if not undo and catalog.rename_window(connection, table) is None and \
                catalog.column_exists(connection, table, old) and catalog.column_exists(connection, table, new):
            return self._copy().backwards_plan(app_label, schema_editor, from_state, to_state)
        return undo

    def describe(self):
        return f"Rename {self.model_name}.{self.old_name} to {self.new_name} through a view (no rows copied)"

    @property
    def migration_name_fragment(self):
        return f"rename_{self.model_name_lower}_{self.old_name_lower}_{self.new_name_lower}"


class RenameColumnViaView(SafeOperation, AlterField):
    """Expand half of a ``db_column`` change through a view (Django's ``AlterField`` state change).

    ``field`` differs from the current field only in its column name. No
    copy fallback: where a view cannot serve, it refuses with the reason.
    """

    def _columns(self, app_label, from_state, to_state):
        old_model = model_of(from_state, app_label, self.model_name)
        new_model = model_of(to_state, app_label, self.model_name)
        return (table_of(new_model), old_model._meta.get_field(self.name).column,
                new_model._meta.get_field(self.name).column,
                [f.column for f in old_model._meta.local_concrete_fields])

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, old, new, columns = self._columns(app_label, from_state, to_state)
        if old == new:
            return []

        def refuse(reason):
            raise UnsafeOperationError(
                f"{self.describe()}: a view cannot keep both column names here ({reason}), and renaming the "
                f"column in place breaks the running code. Nothing was changed. Safe sequence: remove what stops "
                f"the view (see the reason), or keep the column name (leave db_column as it was) and rename the "
                f"field instead, which can fall back to a copy.")

        return open_window(schema_editor, table, old, new, refuse, columns)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, old, new, _ = self._columns(app_label, to_state, from_state)
        if old == new or collecting(schema_editor):
            return []
        return undo_window(schema_editor, table, old, new)

    def describe(self):
        return f"Rename the column of {self.model_name}.{self.name} through a view (no rows copied)"

    @property
    def migration_name_fragment(self):
        return f"rename_column_{self.model_name_lower}_{self.name_lower}"


class FinishRenameViaView(StandaloneOperation):
    """Contract half: the old column name goes; the last one closes the window.

    Also finishes a rename that fell back to a copy at expand
    (``FinishRenameViaCopy``): the database says which strategy ran.
    """

    stage = Stage.CONTRACT

    def __init__(self, model_name, old_column, new_column):
        self.model_name = model_name
        self.old_column = old_column
        self.new_column = new_column

    @property
    def model_name_lower(self):
        return self.model_name.lower()

    def state_forwards(self, app_label, state):
        pass

    def _copy(self, model):
        field = next(f for f in model._meta.local_concrete_fields if f.column == self.new_column)
        old_name = self.old_column[:-3] if field.is_relation and self.old_column.endswith("_id") else self.old_column
        return FinishRenameViaCopy(self.model_name, old_name, field.name)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(to_state, app_label, self.model_name)
        table = table_of(model)
        label = f"take {self.old_column} off the rename window on {table}"
        if collecting(schema_editor):
            return [Transaction(label, windows.close_statements(None, table, self.old_column))]
        connection = schema_editor.connection
        window = catalog.rename_window(connection, table)
        if window is None and catalog.column_exists(connection, table, self.old_column):
            current_report().warning(f"{self.describe()}: the expand step renamed through a copy; finishing the copy")
            return self._copy(model).forwards_plan(app_label, schema_editor, from_state, to_state)
        statements = windows.close_statements(connection, table, self.old_column) if window else []
        if not statements:
            return [_already(label, f"the window shows no {self.old_column}")]
        return [Transaction(label, statements)]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(from_state, app_label, self.model_name)
        table = table_of(model)
        if collecting(schema_editor):
            return []
        connection = schema_editor.connection
        window = catalog.rename_window(connection, table)
        reason = None if window else windows.why_not(connection, table, self.new_column)
        if reason:
            current_report().warning(f"{self.describe()} (reverse): {reason}; restoring the old column through a copy")
            return self._copy(model).backwards_plan(app_label, schema_editor, from_state, to_state)
        label = f"show {self.old_column} again through the view {table}"
        statements = windows.reopen_statements(connection, table, self.old_column, self.new_column)
        if not statements:
            return [_already(label, f"the window shows {self.old_column}")]
        return [Transaction(label, statements, skip_if=checks.WindowShows(table, self.old_column, self.new_column))]

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "old_column": self.old_column, "new_column": self.new_column}

    def references_model(self, name, app_label):
        return name.lower() == self.model_name_lower

    def describe(self):
        return f"Finish renaming {self.model_name}.{self.old_column} to {self.new_column}: drop the old name"

    @property
    def migration_name_fragment(self):
        return f"finish_rename_{self.model_name_lower}_{self.old_column.lower()}_{self.new_column.lower()}"
