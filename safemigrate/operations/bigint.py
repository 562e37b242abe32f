"""int → bigint primary key (AutoField → BigAutoField) without a table rewrite.

A plain ``ALTER COLUMN id TYPE bigint`` rewrites the table and every
referencing table under ACCESS EXCLUSIVE: minutes of downtime on a table big
enough to need it. Expand instead adds ``id__sm_new bigint`` to the table and
a bigint shadow to each single-column foreign key pointing at it, keeps them
equal through cast triggers, backfills, and builds the unique index (and the
FK columns' indexes) CONCURRENTLY. Contract swaps everything in one short,
lock-bounded transaction: the primary key is re-created ``USING INDEX`` (no
scan), the identity sequence moves to the new column, foreign keys come back
NOT VALID and are validated afterwards (SHARE UPDATE EXCLUSIVE, traffic runs).

Scope: identity primary keys (Django's AutoField since 4.1) and single-column
foreign keys found in the catalog. ``serial`` keys are refused with a message.
"""

from types import SimpleNamespace

from django.db.migrations.operations.models import ModelOperation
from django.db.models import BigAutoField, BigIntegerField, PositiveBigIntegerField

from ..exceptions import UnsafeOperationError
from ..pg import backfill, catalog, mirror, triggers
from ..pg.catalog import column_indexes, referencing_keys  # noqa: F401  (importable from here, as before)
from ..pg.copy_steps import (copy_rows, install_trigger, require_columns_agree, require_copy_complete,
                             shadow_column, undo_copy, with_trigger_version)
from ..pg.copy_steps import columns_by_table, mirror_indexes, shadow_index_name
from ..pg.ddl import run_ddl
from ..pg.reporting import step
from ..pg.schema import build_index_concurrently, collecting, model_of, qn, table_of, validate_constraint
from ..pg.steps import set_not_null
from ..stages import Stage
from .base import StandaloneOperation


class _PrimaryKeyOperation(StandaloneOperation, ModelOperation):
    def __init__(self, model_name):
        super().__init__(model_name)

    def _target(self, app_label, state, schema_editor):
        model = model_of(state, app_label, self.name)
        table, pk = table_of(model), model._meta.pk.column
        return table, pk, catalog.referencing_keys(schema_editor.connection, table, pk)

    def deconstruct_kwargs(self):
        return {"model_name": self.name}


class ChangePrimaryKeyToBigint(_PrimaryKeyOperation):
    """Expand: bigint shadows of the key and of every FK to it, kept equal by triggers."""

    requires_non_atomic = True
    lock_level = "ACCESS EXCLUSIVE instant (columns, triggers); SHARE UPDATE EXCLUSIVE for index builds"

    def __init__(self, model_name, trigger_version=1, field=None):
        self.trigger_version = trigger_version
        #: The key field as the new models declare it; the state then matches
        #: them exactly (absent in files written before it existed).
        self.field = field
        super().__init__(model_name)

    def deconstruct_kwargs(self):
        kwargs = with_trigger_version({"model_name": self.name}, self)
        if self.field is not None:
            kwargs["field"] = self.field
        return kwargs

    def state_forwards(self, app_label, state):
        model_state = state.models[app_label, self.name_lower]
        for name, field in model_state.fields.items():
            if field.primary_key:
                if self.field is not None:
                    new = self.field
                else:
                    _, _, args, kwargs = field.deconstruct()
                    big = {"IntegerField": BigIntegerField, "PositiveIntegerField": PositiveBigIntegerField}
                    new = big.get(type(field).__name__, BigAutoField)(*args, **kwargs)
                state.alter_field(app_label, self.name_lower, name, new, True)
                return

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.name, to_state):
            return
        if collecting(schema_editor):
            raise UnsafeOperationError(f"{self.describe()} reads the catalog to find foreign keys; "
                                       f"run it against the database (sqlmigrate cannot show it).")
        table, pk, refs = self._target(app_label, from_state, schema_editor)
        connection = schema_editor.connection
        if not catalog.column_exists(connection, table, shadow_column(pk)) and \
                catalog.column_info(connection, table, pk)["type"] == "bigint":
            return  # already bigint: nothing to do
        if catalog.identity_kind(connection, table, pk) not in ("a", "d") and catalog.column_info(
                connection, table, pk)["default"] is not None:
            raise UnsafeOperationError(
                f"{table}.{pk} is a serial key (its default is a sequence, not an identity): "
                f"ChangePrimaryKeyToBigint moves identity sequences and plain keys without a default. "
                f"Turn the serial into an identity column first (ALTER TABLE ... ALTER COLUMN ... DROP "
                f"DEFAULT; ADD GENERATED BY DEFAULT AS IDENTITY, with the sequence restarted past max(id)), "
                f"then run this migration again.")
        for ref_table, column, _ in [(table, pk, None), *refs]:
            self._shadow(schema_editor, ref_table, column, unique=ref_table == table and column == pk)
        for ref_table, columns in columns_by_table(refs).items():
            mirror_indexes(self, schema_editor, ref_table, columns)

    def _shadow(self, schema_editor, table, column, unique):
        shadow = shadow_column(column)
        connection = schema_editor.connection
        with step(self.describe(), f"add {table}.{shadow} bigint") as record:
            if catalog.column_exists(connection, table, shadow):
                record.skipped = True
            else:
                run_ddl(schema_editor, [f"ALTER TABLE {qn(schema_editor, table)} ADD COLUMN IF NOT EXISTS "
                                        f"{qn(schema_editor, shadow)} bigint"], table=table, record=record)
        install_trigger(self, schema_editor, table, "cast", column, shadow, "bigint")
        copy_rows(self, schema_editor, table, f"{qn(schema_editor, shadow)} = {qn(schema_editor, column)}",
                  f"{qn(schema_editor, shadow)} IS DISTINCT FROM {qn(schema_editor, column)}",
                  f"{table}.bigint.{column}")
        if unique:
            index = shadow_index_name(schema_editor, table, column)
            sql = (f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {qn(schema_editor, index)} "
                   f"ON {qn(schema_editor, table)} ({qn(schema_editor, shadow)})")
            with step(self.describe(), f"index {index} concurrently") as record:
                build_index_concurrently(schema_editor, sql, index, record)
        if not catalog.column_info(connection, table, column)["nullable"]:
            set_not_null(self, schema_editor, SimpleNamespace(_meta=SimpleNamespace(db_table=table)),
                         SimpleNamespace(column=shadow))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.name, from_state):
            return
        table, pk, refs = self._target(app_label, to_state, schema_editor)
        for ref_table, column, _ in [(table, pk, None), *refs]:
            shadow = shadow_column(column)
            undo_copy(self, schema_editor, ref_table, "cast", column, shadow, f"{ref_table}.bigint.{column}")

    def describe(self):
        return f"Change the primary key of {self.name} to bigint (shadow columns kept in step by triggers)"

    @property
    def migration_name_fragment(self):
        return f"{self.name_lower}_pk_bigint"


class FinishChangePrimaryKeyToBigint(_PrimaryKeyOperation):
    """Contract: swap the bigint key and foreign keys in, then validate the foreign keys.

    Irreversible (the int columns are dropped); the swap is one transaction,
    so a failure leaves the expand state intact and a re-run redoes it.
    """

    stage = Stage.CONTRACT
    reversible = False
    requires_non_atomic = True
    lock_level = "ACCESS EXCLUSIVE on the table and referencing tables (instant swap, bounded)"

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.name, to_state):
            return
        if collecting(schema_editor):
            raise UnsafeOperationError(f"{self.describe()} reads the catalog; run it against the database.")
        model = model_of(to_state, app_label, self.name)
        table, pk = table_of(model), model._meta.pk.column
        connection = schema_editor.connection
        # Foreign keys added after the expand (a model created in the same
        # release) were created bigint, so they have no shadow: only their
        # constraint moves to the swapped key.
        refs, direct = [], []
        for ref in catalog.referencing_key_definitions(connection, table, pk):
            shadowed = catalog.column_exists(connection, ref[0], shadow_column(ref[1]))
            (refs if shadowed else direct).append(ref)
        if catalog.column_exists(connection, table, shadow_column(pk)):
            # Indexes created on the int columns since the expand (a later
            # operation of the same release) need their copies too.
            for ref_table, columns in columns_by_table(refs).items():
                mirror_indexes(self, schema_editor, ref_table, columns)
        with step(self.describe(), "swap key, sequence and foreign keys") as record:
            if not catalog.column_exists(connection, table, shadow_column(pk)):
                record.skipped = True
                record.detail = "already swapped"
            else:
                for ref_table, column, *_ in [(table, pk, None), *refs]:
                    require_copy_complete(self, connection, ref_table, "cast", column, shadow_column(column),
                                          f"{ref_table}.bigint.{column}")
                    require_columns_agree(self, schema_editor, ref_table, column, shadow_column(column),
                                          f"{qn(schema_editor, shadow_column(column))} IS DISTINCT FROM "
                                          f"{qn(schema_editor, column)}")
                run_ddl(schema_editor, self._swap(schema_editor, table, pk, refs, direct), table=table,
                        record=record)
                for ref_table, column, *_ in [(table, pk, None), *refs]:
                    backfill.forget(connection, f"{ref_table}.bigint.{column}")
        for ref_table, _, constraint in catalog.referencing_keys(connection, table, pk):
            with step(self.describe(), f"validate {constraint}") as record:
                record.skipped = not validate_constraint(schema_editor, ref_table, constraint)

    def _swap(self, schema_editor, table, pk, refs, direct=()):
        connection = schema_editor.connection
        q = schema_editor.quote_name
        q_table, q_pk, q_shadow = q(table), q(pk), q(shadow_column(pk))
        constraint = catalog.primary_key_name(connection, table)
        statements = []
        # Indexes rebuilt on the shadows get their names back after the int
        # columns (and with them the originals) are dropped.
        renames = []
        for ref_table, columns in columns_by_table(refs).items():
            for name, unique_constraint, _, _, _ in catalog.column_indexes(connection, ref_table, columns):
                temporary = mirror.temporary_name(name)
                if unique_constraint:
                    renames.append(f"ALTER TABLE {q(ref_table)} ADD CONSTRAINT {q(unique_constraint)} "
                                   f"UNIQUE USING INDEX {q(temporary)}")
                else:
                    renames.append(f"ALTER INDEX {q(temporary)} RENAME TO {q(name)}")
        for ref_table, _, name, _ in [*refs, *direct]:
            statements.append(f"ALTER TABLE {q(ref_table)} DROP CONSTRAINT {q(name)}")
        for ref_table, column, _, _ in refs:
            statements += triggers.drop_sql(q, ref_table, "cast", column, shadow_column(column))
        statements += triggers.drop_sql(q, table, "cast", pk, shadow_column(pk))
        if catalog.identity_kind(connection, table, pk) in ("a", "d"):
            statements += [
                f"ALTER TABLE {q_table} ALTER COLUMN {q_shadow} ADD GENERATED BY DEFAULT AS IDENTITY",
                # Continue after the highest of the old sequence and the largest key.
                (f"SELECT setval(pg_get_serial_sequence(%s, %s), GREATEST("
                 f"(SELECT COALESCE(max({q_pk}), 0) FROM {q_table}), "
                 f"COALESCE(pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass), 0), 1))",
                 [q_table, shadow_column(pk), q_table, pk]),
                f"ALTER TABLE {q_table} ALTER COLUMN {q_pk} DROP IDENTITY IF EXISTS",
            ]
        statements += [
            f"ALTER TABLE {q_table} DROP CONSTRAINT {q(constraint)}",
            f"ALTER TABLE {q_table} ADD CONSTRAINT {q(constraint)} PRIMARY KEY USING INDEX "
            f"{q(shadow_index_name(schema_editor, table, pk))}",
            f"ALTER TABLE {q_table} DROP COLUMN {q_pk}",
            f"ALTER TABLE {q_table} RENAME COLUMN {q_shadow} TO {q_pk}",
        ]
        for ref_table, column, name, _ in refs:
            statements += [
                f"ALTER TABLE {q(ref_table)} DROP COLUMN {q(column)}",
                f"ALTER TABLE {q(ref_table)} RENAME COLUMN {q(shadow_column(column))} TO {q(column)}",
            ]
        statements += renames
        for ref_table, column, name, definition in [*refs, *direct]:
            # The constraint's own definition: ON DELETE / ON UPDATE and
            # deferral stay what they were.
            statements.append(f"ALTER TABLE {q(ref_table)} ADD CONSTRAINT {q(name)} {definition} NOT VALID")
        return statements

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        raise NotImplementedError(f"{self.describe()} cannot be reversed: the integer columns are gone.")

    def describe(self):
        return f"Finish changing the primary key of {self.name} to bigint: swap the columns in"

    @property
    def migration_name_fragment(self):
        return f"finish_{self.name_lower}_pk_bigint"
