"""Removing a field in two stages: forget it at expand, drop its column at contract.

The old code selects every column of its models by name, so a column may
only disappear once no old code runs. Expand removes the field from Django's
state (new code stops using it) and makes the column harmless to ignore;
contract drops it after the rollout.
"""

from django.db.migrations.operations.fields import RemoveField
from django.db.migrations.operations.models import ModelOperation
from django.db.models import NOT_PROVIDED

from ..pg import archive, catalog, sql
from ..pg.copy_steps import forget_shadow_progress
from ..pg.mirror import db_default_statement
from ..pg.schema import collecting, column_definition, model_of, table_of
from ..pg.statements import Transaction
from ..pg.steps import add_foreign_key, add_unique_via_index, drop_not_null, foreign_key_name
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation


class RemoveFieldSafely(SafeOperation, RemoveField):
    """Expand: the new code forgets the field; the column stays for the old code.

    A NOT NULL column without a database default would make the new code's
    INSERTs (which omit it) fail, so NOT NULL is dropped first (instant).
    """

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(from_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if field.many_to_many:
            return []
        table = table_of(model)
        plan = []
        if (field.many_to_one or field.one_to_one) and field.db_constraint:
            plan += self.drop_foreign_keys(schema_editor, model, field)
        plan += self.drop_uniqueness(schema_editor, model, field)
        plan += drop_not_null(schema_editor, table, field.column, unless_default=True,
                              label="make the column optional")
        return plan

    @staticmethod
    def drop_foreign_keys(schema_editor, model, field):
        """Drop the column's FOREIGN KEY now, not at contract.

        The new code no longer knows the field, so it deletes parent rows
        without clearing or cascading through it; the constraint would make
        those deletes fail for the whole rollout. The old code may write an
        id that does not exist meanwhile: the column is going away anyway.
        """
        table = table_of(model)
        if collecting(schema_editor):
            names = [foreign_key_name(schema_editor, model, field)]
        else:
            names = schema_editor._constraint_names(model, [field.column], foreign_key=True)
        return [sql.drop_constraint(table, name).but(label=f"drop foreign key {name}") for name in names]

    @staticmethod
    def drop_uniqueness(schema_editor, model, field):
        """Drop unique constraints and indexes that include the column, now.

        The new code omits the column from its INSERTs, so every new row gets
        the column's default (or NULL): with a database default, a second
        insert would violate the uniqueness the new code no longer knows of.
        """
        if collecting(schema_editor):
            return []
        table = table_of(model)
        connection = schema_editor.connection
        with connection.cursor() as cursor:
            found = connection.introspection.get_constraints(cursor, table)
        plan = []
        for name, info in sorted(found.items()):
            if not info["unique"] or info["primary_key"] or field.column not in info["columns"]:
                continue
            if catalog.constraint_state(connection, table, name):
                plan.append(sql.drop_constraint(table, name).but(label=f"drop unique {name}"))
            else:
                plan.append(sql.drop_index(name, table).but(label=f"drop unique {name}"))
        return plan

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        # The column never left. NOT NULL is not restored: rows the new code
        # inserted may hold NULL; SetNotNull restores it once they are filled.
        # The foreign key comes back NOT VALID, then validated (rows the new
        # code orphaned make validation fail loudly, naming the constraint).
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        plan = []
        if (field.many_to_one or field.one_to_one) and field.db_constraint:
            plan += add_foreign_key(schema_editor, model, field)
        if field.unique and not field.primary_key:
            plan += add_unique_via_index(schema_editor, table_of(model), [field.column])
        return plan

    def describe(self):
        return f"Remove {self.model_name}.{self.name} from the models; the column stays until contract"


class DropColumn(StandaloneOperation, ModelOperation):
    """Contract: remove a column the models no longer have: archived (``pg.archive``) unless ARCHIVE is off.

    ``field`` (optional) lets the reverse re-create the column, nullable and
    empty; ``manage.py archive restore`` then writes the archived values back.
    """

    stage = Stage.CONTRACT

    def __init__(self, model_name, column_name, field=None):
        super().__init__(model_name)
        self.column_name = column_name
        self.field = field

    @property
    def model_name(self):
        return self.name

    @property
    def reversible(self):
        return self.field is not None

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(from_state, app_label, self.name))
        virtual = self.field is not None and self.field.generated and not getattr(self.field, "db_persist", True)
        return [Transaction("drop column", archive.column_statements(schema_editor, table, self.column_name,  # hook
                                                                     app_label=app_label, reason="removal",
                                                                     virtual=virtual)),
                archive.drop_set_aside_indexes(),
                forget_shadow_progress(table, self.column_name)]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        if self.field is None:
            raise NotImplementedError(f"{self.describe()} cannot be reversed without field=.")
        model = model_of(to_state, app_label, self.name)
        field = self.field.clone()
        if field.is_relation and isinstance(field.remote_field.model, str):
            # The column type of a foreign key is its target's key type.
            field.remote_field.model = to_state.apps.get_model(field.remote_field.model)
        field.null = True
        field.set_attributes_from_name(self.column_name)
        field.model = model
        field.column = self.column_name
        # Empty for real: a default in ADD COLUMN would show in every existing row, and
        # `archive restore` could no longer tell them from values written since.
        definition, params = column_definition(schema_editor, model, field, default=NOT_PROVIDED,
                                               db_default=NOT_PROVIDED)
        default = db_default_statement(schema_editor, model, field) if field.has_db_default() else None
        return [Transaction("re-create the column, empty", [
            sql.add_column(table_of(model), self.column_name, definition, params), *([default] if default else [])])]

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.name, "column_name": self.column_name}
        if self.field is not None:
            kwargs["field"] = self.field
        return kwargs

    def describe(self):
        return f"Drop column {self.column_name} of {self.name} (archived unless ARCHIVE is off)"

    @property
    def migration_name_fragment(self):
        return f"drop_{self.name_lower}_{self.column_name.lower()}"
