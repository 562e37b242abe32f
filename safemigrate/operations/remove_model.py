"""Removing a model (or a many-to-many table) in two stages.

Expand removes the model from Django's state and takes away what would
break the new code while the table stays for the old code: its foreign
keys (``DropForeignKeys``) and the index and constraint names a model
created in the same release wants (``ReleaseNames``). Contract drops the
table (``DropTable``) once no old code runs.
"""

from django.db.migrations.operations.models import DeleteModel

from ..exceptions import UnsafeOperationError
from ..pg import archive, backfill, catalog, sql
from ..pg.mirror import temporary_name
from ..pg.schema import collecting, table_of
from ..pg.statements import Call, Transaction
from ..pg.steps import add_foreign_key
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation


class RemoveModelSafely(SafeOperation, DeleteModel):
    """Expand: the model leaves Django's state; the table stays for the old code.

    Names its table holds are released by ``ReleaseNames``, which
    ``makemigrations --safe`` puts first in the same migration.
    """

    def routed_model_name(self):
        return self.name

    def describe(self):
        return f"Remove model {self.name} from the models; its table stays until contract"

    @property
    def migration_name_fragment(self):
        return f"remove_model_{self.name_lower}"


class DropForeignKeys(StandaloneOperation):
    """Expand: drop the foreign keys *of* a table the new code no longer uses.

    A removed model's table (or a removed many-to-many field's join table)
    stays until contract for the old code, but its foreign keys would make
    the new code's deletes of the rows they point at fail for the whole
    rollout. Reversing adds them back from the models Django's state has.
    """

    def __init__(self, table_name):
        self.table_name = table_name

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        if collecting(schema_editor):
            return []
        return [sql.drop_constraint(self.table_name, name).but(label=f"drop foreign key {name}")
                for name, _ in catalog.foreign_keys_of(schema_editor.connection, self.table_name)]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        # The definitions are gone with the constraints; Django's state still
        # knows them: the reverse of RemoveModelSafely / the M2M removal puts
        # the model back, and its foreign keys come back NOT VALID here.
        if collecting(schema_editor):
            return []
        plan = []
        for model in to_state.apps.get_models(include_auto_created=True):
            if table_of(model) != self.table_name:
                continue
            for field in model._meta.local_fields:
                if field.is_relation and field.db_constraint and not schema_editor._constraint_names(
                        model, [field.column], foreign_key=True):
                    plan += add_foreign_key(schema_editor, model, field)
        return plan

    def deconstruct_kwargs(self):
        return {"table_name": self.table_name}

    def describe(self):
        return f"Drop the foreign keys of {self.table_name} (the table stays until contract)"

    @property
    def migration_name_fragment(self):
        return f"drop_fks_{self.table_name.lower()}"


class ReleaseNames(StandaloneOperation):
    """Expand: give a table that stays only for the old code other names for its indexes and constraints.

    Index names are unique per schema. A model deleted in this release keeps
    its table until contract, and a model created in the same release
    (often the same model "renamed" with other changes, or renamed back)
    wants the very names Django derives from the table name — its primary
    key, its field indexes, its Meta indexes. Renaming the old table's
    objects first (instant, lock-bounded) frees them; DropTable removes them
    at contract under whatever name they have.
    """

    def __init__(self, table_name, columns=None):
        self.table_name = table_name
        #: Only the plain indexes of these columns (a removed field's column,
        #: which stays until contract), instead of everything on the table.
        self.columns = list(columns) if columns else None

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        if collecting(schema_editor):
            return []
        plan = []
        for name, is_constraint in catalog.named_objects(schema_editor.connection, self.table_name, self.columns):
            new = temporary_name(name)
            rename = (sql.rename_constraint(self.table_name, name, new) if is_constraint
                      else sql.rename_index(name, new, self.table_name))
            plan.append(rename.but(label=f"rename {name} to {new}"))
        return plan

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return []  # the temporary names work as well; a later forward run skips them

    def deconstruct_kwargs(self):
        kwargs = {"table_name": self.table_name}
        if self.columns:
            kwargs["columns"] = self.columns
        return kwargs

    def describe(self):
        return f"Rename the indexes and constraints of {self.table_name} out of the way (the table stays until contract)"

    @property
    def migration_name_fragment(self):
        return f"release_names_{self.table_name.lower()}"


class DropTable(StandaloneOperation):
    """Contract: drop the table of a removed model (archived by default: reversing moves it back)."""

    stage = Stage.CONTRACT
    reversible = True

    def __init__(self, table_name):
        self.table_name = table_name

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        if collecting(schema_editor):
            return archive.table_statements(schema_editor, self.table_name, app_label=app_label)  # hook: archive
        connection = schema_editor.connection
        referencing = catalog.foreign_keys_to(connection, self.table_name)
        if referencing:
            names = ", ".join(f"{table}.{name}" for table, name in referencing)
            raise UnsafeOperationError(
                f"Cannot drop table {self.table_name!r}: foreign keys still point at it ({names}). "
                f"Dropping it with CASCADE would silently remove them. Remove those fields first "
                f"(their contract migration must run before this one), then run this again."
            )
        # Dual-write triggers of an expand that never reached its contract
        # (the table goes instead) leave their functions behind: DROP TABLE
        # removes the trigger, not the function it calls.
        functions = catalog.trigger_functions(connection, self.table_name, "safemigrate")
        return [
            Transaction("drop table", [*archive.table_statements(schema_editor, self.table_name,  # hook: archive
                                                                  app_label=app_label),
                                       *map(sql.drop_function, functions)]),
            Call("forget its progress", lambda c: backfill.forget_table(c, self.table_name), quiet=True),
        ]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return archive.restore_table_plan(self, self.table_name, app_label=app_label)  # hook: archive

    def deconstruct_kwargs(self):
        return {"table_name": self.table_name}

    def describe(self):
        return f"Drop table {self.table_name} (archived unless ARCHIVE is off)"

    @property
    def migration_name_fragment(self):
        return f"drop_table_{self.table_name.lower()}"
