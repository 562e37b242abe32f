"""Removing fields and models in two stages.

The old code selects every column of its models by name, so a column or
table may only disappear once no old code runs. Expand removes the field or
model from Django's state (new code stops using it) and makes the column
harmless to ignore; contract drops it after the rollout.
"""

from django.db.migrations.operations.fields import RemoveField
from django.db.migrations.operations.models import DeleteModel, ModelOperation

from ..exceptions import UnsafeOperationError
from ..pg import catalog
from ..pg.backfill import forget_table
from ..pg.copy_steps import drop_column_statements, forget_shadow_progress
from ..pg.ddl import run_ddl
from ..pg.mirror import temporary_name
from ..pg.reporting import step
from ..pg.schema import collecting, column_definition, drop_constraint, model_of, qn, table_of
from ..pg.steps import add_foreign_key, add_unique_via_index, drop_not_null, foreign_key_name
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation


class RemoveFieldSafely(SafeOperation, RemoveField):
    """Expand: the new code forgets the field; the column stays for the old code.

    A NOT NULL column without a database default would make the new code's
    INSERTs (which omit it) fail, so NOT NULL is dropped first (instant).
    """

    lock_level = "ACCESS EXCLUSIVE (instant DROP NOT NULL, only if needed)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        model = model_of(from_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if field.many_to_many:
            return
        if (field.many_to_one or field.one_to_one) and field.db_constraint:
            self.drop_foreign_keys(schema_editor, model, field)
        self.drop_uniqueness(schema_editor, model, field)
        drop_not_null(self, schema_editor, model, field, unless_default=True, label="make the column optional")

    def drop_foreign_keys(self, schema_editor, model, field):
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
        for name in names:
            with step(self.describe(), f"drop foreign key {name}") as record:
                drop_constraint(schema_editor, table, name, record)

    def drop_uniqueness(self, schema_editor, model, field):
        """Drop unique constraints and indexes that include the column, now.

        The new code omits the column from its INSERTs, so every new row gets
        the column's default (or NULL): with a database default, a second
        insert would violate the uniqueness the new code no longer knows of.
        """
        if collecting(schema_editor):
            return
        table = table_of(model)
        with schema_editor.connection.cursor() as cursor:
            found = schema_editor.connection.introspection.get_constraints(cursor, table)
        for name, info in sorted(found.items()):
            if not info["unique"] or info["primary_key"] or field.column not in info["columns"]:
                continue
            with step(self.describe(), f"drop unique {name}") as record:
                if catalog.constraint_state(schema_editor.connection, table, name):
                    drop_constraint(schema_editor, table, name, record)
                else:
                    run_ddl(schema_editor, [f"DROP INDEX IF EXISTS {qn(schema_editor, name)}"], table=table,
                            record=record)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        # The column never left. NOT NULL is not restored: rows the new code
        # inserted may hold NULL; SetNotNull restores it once they are filled.
        # The foreign key comes back NOT VALID, then validated (rows the new
        # code orphaned make validation fail loudly, naming the constraint).
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if (field.many_to_one or field.one_to_one) and field.db_constraint:
            add_foreign_key(self, schema_editor, model, field)
        if field.unique and not field.primary_key:
            add_unique_via_index(self, schema_editor, model, [field])

    def describe(self):
        return f"Remove {self.model_name}.{self.name} from the models; the column stays until contract"


class DropColumn(StandaloneOperation, ModelOperation):
    """Contract: drop a column the models no longer have (and its indexes/constraints).

    ``field`` (optional) lets the reverse re-create the column, nullable and
    empty: the data is gone.
    """

    stage = Stage.CONTRACT
    lock_level = "ACCESS EXCLUSIVE (instant, bounded by lock_timeout)"

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

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.name, from_state):
            return
        table = table_of(model_of(from_state, app_label, self.name))
        with step(self.describe(), "drop column") as record:
            run_ddl(schema_editor, drop_column_statements(schema_editor, table, self.column_name), table=table,
                    record=record)
        forget_shadow_progress(schema_editor, table, self.column_name)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.field is None:
            raise NotImplementedError(f"{self.describe()} cannot be reversed without field=.")
        if not self.allowed(app_label, schema_editor, self.name, to_state):
            return
        model = model_of(to_state, app_label, self.name)
        field = self.field.clone()
        if field.is_relation and isinstance(field.remote_field.model, str):
            # The column type of a foreign key is its target's key type.
            field.remote_field.model = to_state.apps.get_model(field.remote_field.model)
        field.null = True
        field.set_attributes_from_name(self.column_name)
        field.model = model
        field.column = self.column_name
        table = table_of(model)
        with step(self.describe(), "re-create the column, empty") as record:
            definition, params = column_definition(schema_editor, model, field)
            run_ddl(
                schema_editor,
                [(f"ALTER TABLE {qn(schema_editor, table)} ADD COLUMN IF NOT EXISTS "
                  f"{qn(schema_editor, self.column_name)} {definition}", params)],
                table=table,
                record=record,
            )

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.name, "column_name": self.column_name}
        if self.field is not None:
            kwargs["field"] = self.field
        return kwargs

    def describe(self):
        return f"Drop column {self.column_name} of {self.name} (its data is lost)"

    @property
    def migration_name_fragment(self):
        return f"drop_{self.name_lower}_{self.column_name.lower()}"


class RemoveModelSafely(SafeOperation, DeleteModel):
    """Expand: the model leaves Django's state; the table stays for the old code.

    Names its table holds are released by ``ReleaseNames``, which
    ``makemigrations --safe`` puts first in the same migration.
    """

    lock_level = "none (state only)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self.allowed(app_label, schema_editor)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass

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
    rollout. Reversing adds them back from their recorded definitions.
    """

    lock_level = "SHARE ROW EXCLUSIVE on both tables, instant (bounded by lock_timeout)"

    def __init__(self, table_name):
        self.table_name = table_name

    def state_forwards(self, app_label, state):
        pass

    def _foreign_keys(self, schema_editor):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
                [qn(schema_editor, self.table_name)],
            )
            return cursor.fetchall()

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor) or collecting(schema_editor):
            return
        for name, _ in self._foreign_keys(schema_editor):
            with step(self.describe(), f"drop foreign key {name}") as record:
                drop_constraint(schema_editor, self.table_name, name, record)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        # The definitions are gone with the constraints; Django's state still
        # knows them: the reverse of RemoveModelSafely / the M2M removal puts
        # the model back, and its foreign keys come back NOT VALID here.
        if not self.allowed(app_label, schema_editor) or collecting(schema_editor):
            return
        for model in to_state.apps.get_models(include_auto_created=True):
            if table_of(model) != self.table_name:
                continue
            for field in model._meta.local_fields:
                if field.is_relation and field.db_constraint and not schema_editor._constraint_names(
                        model, [field.column], foreign_key=True):
                    add_foreign_key(self, schema_editor, model, field)

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

    lock_level = "ACCESS EXCLUSIVE instant per renamed object (bounded by lock_timeout)"

    def __init__(self, table_name, columns=None):
        self.table_name = table_name
        #: Only the plain indexes of these columns (a removed field's column,
        #: which stays until contract), instead of everything on the table.
        self.columns = list(columns) if columns else None

    def state_forwards(self, app_label, state):
        pass

    def _objects(self, schema_editor):
        """``[(name, is_constraint)]`` of the table's indexes and constraints not yet renamed."""
        if self.columns:
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    r"""
                    SELECT i.relname, false FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                     WHERE x.indrelid = to_regclass(%s) AND i.relname NOT LIKE '%%\_smtmp\_%%'
                       AND NOT x.indisunique AND NOT x.indisprimary
                       AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = x.indrelid
                                   AND a.attnum = ANY(x.indkey) AND a.attname = ANY(%s))
                     ORDER BY 1
                    """,
                    [qn(schema_editor, self.table_name), self.columns],
                )
                return cursor.fetchall()
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                r"""
                SELECT conname, true FROM pg_constraint
                 WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u', 'c', 'f', 'x')
                   AND conname NOT LIKE '%%\_smtmp\_%%'
                UNION
                SELECT i.relname, false FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                 WHERE x.indrelid = to_regclass(%s) AND i.relname NOT LIKE '%%\_smtmp\_%%'
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                                   AND c.conrelid = x.indrelid)
                 ORDER BY 1
                """,
                [qn(schema_editor, self.table_name), qn(schema_editor, self.table_name)],
            )
            return cursor.fetchall()

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor) or collecting(schema_editor):
            return
        q = schema_editor.quote_name
        for name, is_constraint in self._objects(schema_editor):
            new = temporary_name(name)
            sql = (f"ALTER TABLE {q(self.table_name)} RENAME CONSTRAINT {q(name)} TO {q(new)}" if is_constraint
                   else f"ALTER INDEX {q(name)} RENAME TO {q(new)}")
            with step(self.describe(), f"rename {name} to {new}") as record:
                run_ddl(schema_editor, [sql], table=self.table_name, record=record)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass  # the temporary names work as well; a later forward run skips them

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
    """Contract: drop the table of a removed model. Irreversible: the data is gone."""

    stage = Stage.CONTRACT
    reversible = False
    lock_level = "ACCESS EXCLUSIVE (instant, bounded by lock_timeout)"

    def __init__(self, table_name):
        self.table_name = table_name

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor):
            return
        connection = schema_editor.connection
        if not collecting(schema_editor):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT conrelid::regclass::text, conname FROM pg_constraint "
                    "WHERE contype = 'f' AND confrelid = to_regclass(%s) AND conrelid <> confrelid",
                    [qn(schema_editor, self.table_name)],
                )
                referencing = cursor.fetchall()
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
        functions = [] if collecting(schema_editor) else self._trigger_functions(schema_editor)
        with step(self.describe(), "drop table") as record:
            run_ddl(
                schema_editor,
                [f"DROP TABLE IF EXISTS {qn(schema_editor, self.table_name)}",
                 *(f"DROP FUNCTION IF EXISTS {qn(schema_editor, name)}()" for name in functions)],
                table=self.table_name,
                record=record,
            )
        if not collecting(schema_editor):
            forget_table(schema_editor.connection, self.table_name)

    def _trigger_functions(self, schema_editor):
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                "WHERE t.tgrelid = to_regclass(%s) AND p.proname LIKE 'safemigrate%%'",
                [qn(schema_editor, self.table_name)],
            )
            return [name for (name,) in cursor.fetchall()]

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        raise NotImplementedError(f"{self.describe()} cannot be reversed: the table and its data are gone.")

    def deconstruct_kwargs(self):
        return {"table_name": self.table_name}

    def describe(self):
        return f"Drop table {self.table_name} (its data is lost)"

    @property
    def migration_name_fragment(self):
        return f"drop_table_{self.table_name.lower()}"
