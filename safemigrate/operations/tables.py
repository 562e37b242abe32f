"""Renaming a model's table while the old code still uses the old name.

Expand renames the table and, in the same short transaction, creates a view
under the old name. A view over a single table with every column is
automatically updatable in PostgreSQL, so the old code's SELECT, INSERT
(with RETURNING and the table's defaults), UPDATE and DELETE keep working
through it. Contract drops the view.

If the table name does not matter, ``RenameModelKeepTable`` is simpler
still and the safest default for the autodetector: a state-only rename with
``Meta.db_table`` pinned to the old name. No lock, no DDL, nothing the old
code can notice, nothing to contract. The view route is for teams that want
the table renamed too; its caveats: the view's column list is frozen at
creation (columns added later are invisible to old code, which does not use
them), and TRUNCATE / ALTER through the old name fail.

Both refuse a model with auto-created many-to-many tables: Django's rename
also renames those tables' ``<model>_id`` columns, which needs its own
expand/contract (rename the column via copy) that these operations do not do.
"""

from django.db import connection as default_connection
from django.db.backends.utils import truncate_name

from django.db.migrations.operations.models import RenameModel

from ..exceptions import UnsafeOperationError
from ..pg import checks, sql
from ..pg.schema import model_of, table_of
from ..pg.statements import Transaction
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation


def _through(field):
    return field.through if hasattr(field, "through") else field.remote_field.through


def refuse_auto_m2m(operation, model):
    """Django's rename rewrites auto-created M2M tables' columns; we cannot do that safely here."""
    fields = [f for f in model._meta.get_fields(include_hidden=True)
              if f.many_to_many and _through(f)._meta.auto_created]
    if fields:
        names = ", ".join(sorted({f.name for f in fields}))
        raise UnsafeOperationError(
            f"{operation.describe()}: the model takes part in auto-created many-to-many tables ({names}) "
            f"whose <model>_id columns Django renames with the model; renaming those columns in place "
            f"breaks the running code. Give those relations an explicit through model (state-only, "
            f"SeparateDatabaseAndState) first, or rename their columns with RenameViaCopy."
        )


def default_table(app_label, model_name):
    return truncate_name(f"{app_label}_{model_name.lower()}", default_connection.ops.max_name_length())


class RenameModelKeepTable(SafeOperation, RenameModel):
    """Rename a model in the code only: the table keeps its name (``db_table`` pinned).

    The recommended default: no DDL at all, so no lock and no window where
    either code version could fail.
    """

    def state_forwards(self, app_label, state):
        old_state = state.models[app_label, self.old_name_lower]
        table = old_state.options.get("db_table") or default_table(app_label, self.old_name)
        state.rename_model(app_label, self.old_name, self.new_name)
        state.alter_model_options(app_label, self.new_name_lower, {"db_table": table})

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        refuse_auto_m2m(self, model_of(to_state, app_label, self.new_name))
        return []

    def describe(self):
        return f"Rename model {self.old_name} to {self.new_name}, keeping its table name"

    @property
    def migration_name_fragment(self):
        return f"rename_{self.old_name_lower}_{self.new_name_lower}_keep_table"


class RenameModelWithView(SafeOperation, RenameModel):
    """Rename a model and its table; the old name stays, as an updatable view, until contract."""

    def _tables(self, app_label, old_state, new_state):
        return (table_of(model_of(old_state, app_label, self.old_name)),
                table_of(model_of(new_state, app_label, self.new_name)))

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        old, new = self._tables(app_label, from_state, to_state)
        refuse_auto_m2m(self, model_of(to_state, app_label, self.new_name))
        if old == new:
            return []
        return [Transaction(f"rename {old} to {new} and leave a view", [sql.rename_table(old, new),
                                                                         sql.create_view(old, new)],
                            skip_if=checks.ViewExists(old) & checks.TableExists(new))]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        old, new = self._tables(app_label, to_state, from_state)
        if old == new:
            return []
        return [Transaction(f"drop the view, rename {new} back to {old}", [sql.drop_view(old),
                                                                            sql.rename_table(new, old)])]

    def describe(self):
        return f"Rename model {self.old_name} to {self.new_name}, keeping the old table name as a view"

    @property
    def migration_name_fragment(self):
        return f"rename_{self.old_name_lower}_{self.new_name_lower}"


class DropCompatibilityView(StandaloneOperation):
    """Contract: drop the view left under a renamed table's old name."""

    stage = Stage.CONTRACT

    def __init__(self, old_table, new_table=None):
        self.old_table = old_table
        self.new_table = new_table

    @property
    def reversible(self):
        return self.new_table is not None

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return [sql.drop_view(self.old_table).but(label="drop view")]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        if self.new_table is None:
            raise NotImplementedError(f"{self.describe()} cannot be reversed without new_table=.")
        return [sql.create_view(self.old_table, self.new_table, replace=True).but(label="re-create view")]

    def deconstruct_kwargs(self):
        kwargs = {"old_table": self.old_table}
        if self.new_table:
            kwargs["new_table"] = self.new_table
        return kwargs

    def describe(self):
        return f"Drop the compatibility view {self.old_table}"

    @property
    def migration_name_fragment(self):
        return f"drop_view_{self.old_table.lower()}"
