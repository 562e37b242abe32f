"""A ``Meta.db_table`` change while the old code still queries the old name.

Django's ``AlterModelTable`` renames the table (and the auto-created
many-to-many tables named after it) in place: the old code's next query
fails with "relation does not exist". ``AlterModelTableWithView`` renames
each of those tables and, in the same short transaction, leaves an updatable
view under the old name, as ``RenameModelWithView`` does for a model rename;
``DropCompatibilityView`` removes each view at contract.
"""

from django.db.migrations.operations.models import AlterModelTable

from ..pg import checks, sql
from ..pg.schema import model_of
from ..pg.statements import Transaction
from .base import SafeOperation


def renamed_tables(old_model, new_model):
    """``[(old, new), ...]``: the model's table and its auto-created join tables whose names change.

    Join tables are paired by field name: Django derives an auto-created
    join table's name from the model's table, so it moves with it.
    """
    pairs = [(old_model._meta.db_table, new_model._meta.db_table)]
    old_fields = {f.name: f for f in old_model._meta.local_many_to_many}
    for field in new_model._meta.local_many_to_many:
        old = old_fields.get(field.name)
        if old is not None and field.remote_field.through._meta.auto_created:
            pairs.append((old.remote_field.through._meta.db_table, field.remote_field.through._meta.db_table))
    return [(old, new) for old, new in pairs if old != new]


class AlterModelTableWithView(SafeOperation, AlterModelTable):
    """``AlterModelTable`` that leaves an updatable view under each old table name until contract."""

    def routed_model_name(self):
        return self.name

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        pairs = renamed_tables(model_of(from_state, app_label, self.name), model_of(to_state, app_label, self.name))
        # Each rename and its view commit together (ACCESS EXCLUSIVE for an
        # instant); a re-run after a kill skips the pairs already done.
        return [Transaction(f"rename {old} to {new} and leave a view",
                            [sql.rename_table(old, new), sql.create_view(old, new)],
                            skip_if=checks.ViewExists(old) & checks.TableExists(new))
                for old, new in pairs]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        pairs = renamed_tables(model_of(to_state, app_label, self.name), model_of(from_state, app_label, self.name))
        return [Transaction(f"drop the view, rename {new} back to {old}",
                            [sql.drop_view(old).but(skip_if=None), sql.rename_table(new, old)],
                            skip_if=~checks.TableExists(new))
                for old, new in reversed(pairs)]

    def describe(self):
        return (f"Rename table for {self.name} to {self.table if self.table is not None else '(default)'}, "
                f"keeping the old name as a view")
