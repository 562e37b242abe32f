"""Column operations that never rewrite the table or scan it under a lock.

PostgreSQL 11+ adds a column with a constant default by writing the default
into the catalog, and PostgreSQL 12+ sets NOT NULL without a scan when a
validated ``CHECK (col IS NOT NULL)`` already proves it. Everything here is
built on those two facts; the only table lock taken is ACCESS EXCLUSIVE for
an instant, bounded and retried by the runner.
"""

from django.db.migrations.operations.fields import AddField, AlterField, FieldOperation
from django.db.models import NOT_PROVIDED

from ..exceptions import AtomicMigrationError, UnsafeOperationError
from ..pg import sql
from ..pg.schema import (
    collecting,
    column_definition,
    field_indexes,
    model_of,
    needs_constant_default,
    statement_name,
    table_of,
)
from ..pg.statements import Call, Skipped, Transaction
from ..pg.steps import add_check, add_unique_via_index, drop_not_null, set_not_null
from ..stages import Stage
from .base import SafeOperation, StageArgument, StandaloneOperation


def new_column_plan(schema_editor, model, field):
    """Add ``field``'s column without a rewrite, then its CHECK, indexes and uniqueness without long locks.

    A nullable column gets a callable default not as a DB default (it would
    be evaluated once for every row); a constant one fills the existing rows
    and, kept until contract (``DropColumnDefault``), the old code's inserts.
    """
    reason = needs_constant_default(field)
    if reason:
        raise UnsafeOperationError(
            f"Cannot add {model.__name__}.{field.name} in one step: {reason}. Filling every "
            f"existing row would rewrite the table under ACCESS EXCLUSIVE, and old code would "
            f"fail its INSERTs. Add it with null=True (AddColumnNullable), fill it with "
            f"Backfill / RunPythonBatched, then SetNotNull in a contract migration — "
            f"`makemigrations --safe` generates exactly that."
        )
    table = table_of(model)
    callable_default = field.has_default() and callable(field.default)
    overrides = {"default": NOT_PROVIDED} if field.null and callable_default else {}
    definition, params = column_definition(schema_editor, model, field, **overrides)
    add = sql.add_column(table, field.column, definition, params).but(label="add column")
    statements = [add]
    if field.db_comment:
        # Django comments a column it adds in a statement of its own.
        statements.append(sql.comment_on_column(table, field.column, field.db_comment))
    if field.null and not field.has_default() and not field.has_db_default() and \
            schema_editor.effective_default(field) is not None:
        # The current time Django's schema editor gives an auto_now column's
        # existing rows: as in plain Django, a value for them, not a default.
        statements.append(sql.drop_default(table, field.column))
    plan = [add] if len(statements) == 1 else [Transaction("add column", statements, skip_if=add.skip_if)]
    check = field.db_parameters(connection=schema_editor.connection)["check"]
    if check:
        # PositiveIntegerField's ">= 0" and the like: Django puts it in the
        # column definition, which would check every row under the lock.
        plan += add_check(table, schema_editor._create_index_name(table, [field.column], "_check"), check)
    for statement in field_indexes(schema_editor, model, field):
        plan.append(sql.create_index_concurrently(statement, statement_name(statement), table))
    if field.unique:
        plan += add_unique_via_index(schema_editor, table, [field.column])
    return plan


class AddColumnNullable(SafeOperation, AddField):
    """Add a column without a table rewrite.

    A nullable column, or a NOT NULL one with a constant default kept as a
    database default: the old code, which does not know the field, omits it
    from its INSERTs and the default fills it. Volatile or callable defaults
    would need one value per row (a rewrite), so they are refused with the
    safe route. Indexes the field asks for are built concurrently afterwards.
    """

    def __init__(self, model_name, name, field, preserve_default=True):
        # preserve_default=False (AddField's): a one-off default given to
        # makemigrations fills existing rows (and, as a DB default, old
        # code's inserts) but is not part of the model.
        super().__init__(model_name, name, field, preserve_default)
        self.requires_non_atomic = bool(field.db_index or field.unique)

    def field_to_add(self, app_label, to_state):
        model = model_of(to_state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        if not self.preserve_default:
            field = field.clone()
            field.set_attributes_from_name(self.name)
            field.model = model
            field.default = self.field.default
        return model, field

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model, field = self.field_to_add(app_label, to_state)
        return new_column_plan(schema_editor, model, field)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(from_state, app_label, self.model_name)
        column = model._meta.get_field(self.name).column
        return [sql.drop_column(table_of(model), column).but(label="drop column (data in it is lost)")]

    def describe(self):
        return f"Add column {self.name} to {self.model_name} without a rewrite (reversing drops it and its data)"


class _ColumnDefault(StandaloneOperation, FieldOperation):
    """A database-default step: the field in the models does not change."""

    def __init__(self, model_name, name):
        super().__init__(model_name, name)


class DropColumnDefault(_ColumnDefault):
    """Drop the database default that kept old code's INSERTs working.

    Contract: while old code runs it omits the column and relies on the
    default. A field declaring ``db_default`` keeps its default.
    """

    stage = Stage.CONTRACT

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name}

    def _plan(self, app_label, schema_editor, state, drop):
        model = model_of(state, app_label, self.model_name)
        field = model._meta.get_field(self.name)
        table = table_of(model)
        label = "drop default" if drop else "restore default"
        if field.has_db_default():
            return [Call(label, lambda connection: Skipped("the field declares db_default"))]
        if drop:
            return [sql.drop_default(table, field.column).but(label=label)]
        value = schema_editor.effective_default(field)
        if value is None:
            return []
        return [sql.set_default(table, field.column, "%s", [value]).but(label=label)]

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, to_state, drop=True)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, to_state, drop=False)

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

    def __init__(self, model_name, name, expression):
        super().__init__(model_name, name)
        self.expression = expression

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name, "expression": self.expression}

    def _column(self, app_label, state):
        model = model_of(state, app_label, self.model_name)
        return table_of(model), model._meta.get_field(self.name).column

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, column = self._column(app_label, to_state)
        return [sql.set_default(table, column, self.expression).but(label="set default")]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, column = self._column(app_label, to_state)
        return [sql.drop_default(table, column).but(label="drop default")]

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


class SetNotNull(StageArgument, SafeOperation, AlterField):
    """Make a column NOT NULL without holding ACCESS EXCLUSIVE for a full scan.

    ``field`` is the final field (``null=False``), as in ``AlterField``. It is
    a contract step when generated for a nullable → NOT NULL change, because
    old code may still insert NULLs until the rollout ends.
    """

    requires_non_atomic = True

    def __init__(self, model_name, name, field, stage=None):
        super().__init__(model_name, name, field)
        self.set_stage(stage)

    def _column(self, app_label, state):
        model = model_of(state, app_label, self.model_name)
        return table_of(model), model._meta.get_field(self.name).column

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, column = self._column(app_label, to_state)
        return set_not_null(schema_editor, table, column, model_name=self.model_name)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, column = self._column(app_label, from_state)
        return drop_not_null(schema_editor, table, column)

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

    reverse_requires_non_atomic = True

    def _column(self, app_label, state):
        model = model_of(state, app_label, self.model_name)
        return table_of(model), model._meta.get_field(self.name).column

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, column = self._column(app_label, to_state)
        return drop_not_null(schema_editor, table, column)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        refuse_reverse_in_transaction(self, schema_editor, "validates every row for NOT NULL")
        table, column = self._column(app_label, to_state)
        return set_not_null(schema_editor, table, column, model_name=self.model_name)

    def describe(self):
        return f"Drop NOT NULL on {self.model_name}.{self.name}"

    @property
    def migration_name_fragment(self):
        return f"drop_not_null_{self.model_name_lower}_{self.name_lower}"
