"""Column operations that never rewrite the table or scan it under a lock.

PostgreSQL 11+ adds a column with a constant default by writing the default
into the catalog, and PostgreSQL 12+ sets NOT NULL without a scan when a
validated ``CHECK (col IS NOT NULL)`` already proves it. Everything here is
built on those two facts; the only table lock taken is ACCESS EXCLUSIVE for
an instant, through ``pg.ddl.run_ddl`` (bounded and retried).
"""

from django.db.migrations.operations.fields import AddField, AlterField, FieldOperation
from django.db.models import NOT_PROVIDED

from ..exceptions import AtomicMigrationError, UnsafeOperationError
from ..pg import catalog
from ..pg.ddl import run_ddl
from ..pg.reporting import step
from ..pg.schema import (
    build_index_concurrently,
    collecting,
    column_definition,
    field_indexes,
    model_of,
    needs_constant_default,
    qn,
    statement_name,
    table_of,
)
from ..pg.steps import add_check, add_unique_via_index, drop_not_null, set_not_null
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation


class AddColumnNullable(SafeOperation, AddField):
    """Add a column without a table rewrite.

    A nullable column, or a NOT NULL one with a constant default kept as a
    database default: the old code, which does not know the field, omits it
    from its INSERTs and the default fills it. Volatile or callable defaults
    would need one value per row (a rewrite), so they are refused with the
    safe route. Indexes the field asks for are built concurrently afterwards.
    """

    lock_level = "ACCESS EXCLUSIVE (instant catalog change, bounded by lock_timeout)"

    def __init__(self, model_name, name, field, preserve_default=True):
        # preserve_default=False (AddField's): a one-off default given to
        # makemigrations fills existing rows (and, as a DB default, old
        # code's inserts) but is not part of the model.
        super().__init__(model_name, name, field, preserve_default)
        self.requires_non_atomic = bool(field.db_index or field.unique)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if not self.preserve_default:
            field = field.clone()
            field.set_attributes_from_name(self.name)
            field.model = model
            field.default = self.field.default
        reason = needs_constant_default(field)
        if reason:
            raise UnsafeOperationError(
                f"Cannot add {model.__name__}.{self.name} in one step: {reason}. Filling every "
                f"existing row would rewrite the table under ACCESS EXCLUSIVE, and old code would "
                f"fail its INSERTs. Add it with null=True (AddColumnNullable), fill it with "
                f"Backfill / RunPythonBatched, then SetNotNull in a contract migration — "
                f"`makemigrations --safe` generates exactly that."
            )
        self.add_column(schema_editor, model, field)

    def add_column(self, schema_editor, model, field):
        table = table_of(model)
        with step(self.describe(), "add column") as record:
            if not collecting(schema_editor) and catalog.column_exists(
                schema_editor.connection, table, field.column
            ):
                record.skipped = True
            else:
                # A nullable column gets a callable default not as a DB
                # default (it would be evaluated once for every row); a
                # constant one fills the existing rows and, kept until
                # contract (DropColumnDefault), the old code's inserts.
                callable_default = field.has_default() and callable(field.default)
                overrides = {"default": NOT_PROVIDED} if field.null and callable_default else {}
                definition, params = column_definition(schema_editor, model, field, **overrides)
                q_table, q_column = qn(schema_editor, table), qn(schema_editor, field.column)
                run_ddl(schema_editor,
                        [(f"ALTER TABLE {q_table} ADD COLUMN IF NOT EXISTS {q_column} {definition}", params)],
                        table=table, record=record)
        check = field.db_parameters(connection=schema_editor.connection)["check"]
        if check:
            # PositiveIntegerField's ">= 0" and the like: Django puts it in the
            # column definition, which would check every row under the lock.
            add_check(self, schema_editor, table, schema_editor._create_index_name(table, [field.column], "_check"),
                      check)
        for statement in field_indexes(schema_editor, model, field):
            with step(self.describe(), f"index {statement_name(statement)} concurrently") as record:
                build_index_concurrently(schema_editor, statement, statement_name(statement), record)
        if field.unique:
            add_unique_via_index(self, schema_editor, model, [field])

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        model = model_of(from_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        table = table_of(model)
        with step(self.describe(), "drop column (data in it is lost)") as record:
            run_ddl(
                schema_editor,
                [f"ALTER TABLE {qn(schema_editor, table)} DROP COLUMN IF EXISTS {qn(schema_editor, field.column)}"],
                table=table,
                record=record,
            )

    def describe(self):
        return f"Add column {self.name} to {self.model_name} without a rewrite (reversing drops it and its data)"


class _ColumnDefault(StandaloneOperation, FieldOperation):
    """A database-default step: the field in the models does not change."""

    def __init__(self, model_name, name):
        super().__init__(model_name, name)

    def state_forwards(self, app_label, state):
        pass


class DropColumnDefault(_ColumnDefault):
    """Drop the database default that kept old code's INSERTs working.

    Contract: while old code runs it omits the column and relies on the
    default. A field declaring ``db_default`` keeps its default.
    """

    stage = Stage.CONTRACT
    lock_level = "ACCESS EXCLUSIVE (instant catalog change, bounded by lock_timeout)"

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name}

    def _set(self, app_label, schema_editor, state, drop):
        if not self.allowed(app_label, schema_editor, self.model_name, state):
            return
        model = model_of(state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        table = table_of(model)
        with step(self.describe(), "drop default" if drop else "restore default") as record:
            if field.has_db_default():
                record.skipped = True
                record.detail = "the field declares db_default"
                return
            prefix = f"ALTER TABLE {qn(schema_editor, table)} ALTER COLUMN {qn(schema_editor, field.column)}"
            if drop:
                statement = (f"{prefix} DROP DEFAULT", None)
            else:
                value = schema_editor.effective_default(field)
                if value is None:
                    record.skipped = True
                    return
                statement = (f"{prefix} SET DEFAULT %s", [value])
            run_ddl(schema_editor, [statement], table=table, record=record)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._set(app_label, schema_editor, to_state, drop=True)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._set(app_label, schema_editor, to_state, drop=False)

    def describe(self):
        return f"Drop the database default of {self.model_name}.{self.name} (old code no longer inserts)"

    @property
    def migration_name_fragment(self):
        return f"drop_default_{self.model_name_lower}_{self.name_lower}"


class SetDatabaseDefault(_ColumnDefault):
    """Give a column a database default from an SQL expression (instant).

    Used for callable defaults during expand: ``gen_random_uuid()`` or
    ``now()`` fills the rows the old code inserts without the column, so the
    backfill has a fixed amount of work. A volatile default is set *after*
    the column exists: given in ADD COLUMN it would rewrite the table.
    """

    lock_level = "ACCESS EXCLUSIVE (instant catalog change, bounded by lock_timeout)"

    def __init__(self, model_name, name, expression):
        super().__init__(model_name, name)
        self.expression = expression

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name, "expression": self.expression}

    def _alter(self, app_label, schema_editor, state, clause):
        if not self.allowed(app_label, schema_editor, self.model_name, state):
            return
        model = model_of(state, app_label, self.model_name)
        column = model._meta.get_field(self.name).column
        table = table_of(model)
        with step(self.describe(), clause.split(" ")[0].lower() + " default") as record:
            run_ddl(schema_editor,
                    [f"ALTER TABLE {qn(schema_editor, table)} ALTER COLUMN {qn(schema_editor, column)} {clause}"],
                    table=table, record=record)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._alter(app_label, schema_editor, to_state, f"SET DEFAULT {self.expression}")

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._alter(app_label, schema_editor, to_state, "DROP DEFAULT")

    def describe(self):
        return f"Set the database default of {self.model_name}.{self.name} to {self.expression}"

    @property
    def migration_name_fragment(self):
        return f"default_{self.model_name_lower}_{self.name_lower}"


def refuse_reverse_in_transaction(operation, schema_editor, work):
    """Refuse a reverse whose long step would run under a lock held by the surrounding transaction."""
    if schema_editor.connection.in_atomic_block and not collecting(schema_editor):
        raise AtomicMigrationError(
            f"Reversing {operation.describe()!r} {work}, which must happen outside a transaction: "
            f"inside this atomic migration the table would stay locked (ACCESS EXCLUSIVE) through "
            f"the whole scan, stalling every query on it. `manage.py migrate <app> <target>` runs the "
            f"reverse outside a transaction by itself when the migration holds only safemigrate "
            f"operations; otherwise move this operation into a migration of its own, or set "
            f"`atomic = False` on its Migration class, and migrate backwards again."
        )


class SetNotNull(SafeOperation, AlterField):
    """Make a column NOT NULL without holding ACCESS EXCLUSIVE for a full scan.

    ``field`` is the final field (``null=False``), as in ``AlterField``. It is
    a contract step when generated for a nullable → NOT NULL change, because
    old code may still insert NULLs until the rollout ends.
    """

    requires_non_atomic = True
    lock_level = "SHARE UPDATE EXCLUSIVE for the validation scan; ACCESS EXCLUSIVE instant"

    def __init__(self, model_name, name, field, stage=None):
        super().__init__(model_name, name, field)
        if stage is not None:
            self.stage = Stage(stage)

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        if self.stage is not Stage.EXPAND:
            kwargs["stage"] = str(self.stage)
        return name, args, kwargs

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if self.allowed(app_label, schema_editor, self.model_name, to_state):
            model = model_of(to_state, app_label, self.model_name)
            set_not_null(self, schema_editor, model, model._meta.get_field(self.name))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.allowed(app_label, schema_editor, self.model_name, from_state):
            model = model_of(from_state, app_label, self.model_name)
            drop_not_null(self, schema_editor, model, model._meta.get_field(self.name))

    def describe(self):
        return f"Set NOT NULL on {self.model_name}.{self.name} through a validated CHECK"

    @property
    def migration_name_fragment(self):
        return f"set_not_null_{self.model_name_lower}_{self.name_lower}"


class DropNotNull(SafeOperation, AlterField):
    """Allow NULLs: the expand step that lets new code stop writing a column.

    Its reverse is ``SetNotNull``'s sequence (NOT VALID check, VALIDATE, SET
    NOT NULL), whose steps must each commit: inside a transaction the check's
    ACCESS EXCLUSIVE would be held through the validation scan. ``migrate``
    therefore unapplies a migration made only of safemigrate operations
    outside a transaction (``reverse_requires_non_atomic``), and the reverse
    refuses to run inside one.
    """

    lock_level = "ACCESS EXCLUSIVE (instant catalog change, bounded by lock_timeout)"
    reverse_requires_non_atomic = True

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if self.allowed(app_label, schema_editor, self.model_name, to_state):
            model = model_of(to_state, app_label, self.model_name)
            drop_not_null(self, schema_editor, model, model._meta.get_field(self.name))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.allowed(app_label, schema_editor, self.model_name, to_state):
            refuse_reverse_in_transaction(self, schema_editor, "validates every row for NOT NULL")
            model = model_of(to_state, app_label, self.model_name)
            set_not_null(self, schema_editor, model, model._meta.get_field(self.name))

    def describe(self):
        return f"Drop NOT NULL on {self.model_name}.{self.name}"

    @property
    def migration_name_fragment(self):
        return f"drop_not_null_{self.model_name_lower}_{self.name_lower}"
