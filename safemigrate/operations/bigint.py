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

Scope: identity primary keys (Django's AutoField since 4.1), single-column
foreign keys found in the catalog and relations without a constraint
(``db_constraint=False``) found in the models, followed through keys that
reference the key in turn (a multi-table child's ``<parent>_ptr``), as plain
Django's ``AlterField`` follows them. ``serial`` keys are refused with a message.
"""

from dataclasses import dataclass

from django.db.migrations.operations.models import ModelOperation
from django.db.models import BigAutoField, BigIntegerField, PositiveBigIntegerField

from ..exceptions import UnsafeOperationError
from ..pg import archive, catalog, mirror, sql
from ..pg.copy_steps import (
    columns_by_table,
    copy_rows,
    deferred_not_null,
    drop_trigger_statements,
    forget_progress,
    install_trigger,
    mirror_indexes,
    require_columns_agree,
    require_copy_complete,
    shadow_index_name,
    undo_copy,
)
from ..pg.partitions import refuse_primary_key_swap
from ..pg.schema import collecting, model_of, shadow_column, table_of
from ..pg.statements import Call, Skipped, Transaction
from ..pg.steps import set_not_null
from ..stages import Stage
from .background_argument import BackgroundArgument
from .base import StandaloneOperation
from .triggered import TriggerVersion


class _PrimaryKeyOperation(StandaloneOperation, ModelOperation):
    def __init__(self, model_name):
        super().__init__(model_name)

    def routed_model_name(self):
        return self.name

    def _target(self, app_label, state, schema_editor):
        model = model_of(state, app_label, self.name)
        table, pk = table_of(model), model._meta.pk.column
        refs = [(ref.table, ref.column, ref.constraint)
                for ref in referencing_closure(schema_editor.connection, state, table, pk, model)]
        return table, pk, refs

    def deconstruct_kwargs(self):
        return {"model_name": self.name}


@dataclass(frozen=True)
class Reference:
    """A column that follows the key's type: ``table.column`` references ``target``'s key.

    ``constraint`` / ``definition``: its FOREIGN KEY (None for a relation
    with ``db_constraint=False``, found in the models). ``keyed``: the
    column is its own table's primary key (a multi-table child's
    ``<parent>_ptr``): its key moves to the shadow at the swap, and what
    references it follows the type too.
    """

    table: str
    column: str
    constraint: "str | None"
    definition: "str | None"
    target: str
    keyed: bool = False


def unconstrained_references(state, model):
    """``[(table, column)]`` of relations to ``model``'s key without a FOREIGN KEY (``db_constraint=False``).

    The catalog cannot show them, and their columns must become bigint with
    the key all the same, as plain Django's AlterField makes them.
    """
    out = []
    for other in state.apps.get_models(include_auto_created=True):
        if other._meta.proxy or not other._meta.managed:
            continue
        for field in other._meta.local_concrete_fields:
            if ((field.many_to_one or field.one_to_one) and not field.db_constraint
                    and field.related_model is model and field.target_field.primary_key):
                out.append((other._meta.db_table, field.column))
    return sorted(set(out))


def referencing_closure(connection, state, table, column, model):
    """Every ``Reference`` whose column follows ``table.column``'s type, closed over keyed references.

    Foreign keys to the key (from the catalog, with their definitions),
    relations to it without a constraint (from the models), and, where such
    a column is its own table's primary key (a multi-table child's
    ``<parent>_ptr``, at any depth), whatever references that key in turn:
    plain Django's ``AlterField`` widens them all. Breadth first, so a
    reference always comes after the keyed reference it hangs from.
    """
    found, seen, targets = [], set(), [(table, column, model)]
    while targets:
        target_table, target_column, target_model = targets.pop(0)
        refs = list(catalog.referencing_key_definitions(connection, target_table, target_column))
        if target_model is not None:
            refs += [(t, c, None, None) for t, c in unconstrained_references(state, target_model)]
        for ref_table, ref_column, constraint, definition in refs:
            if (ref_table, ref_column) in seen:
                continue
            seen.add((ref_table, ref_column))
            keyed = catalog.primary_key_columns(connection, ref_table) == [ref_column]
            found.append(Reference(ref_table, ref_column, constraint, definition, target_table, keyed))
            if keyed:
                owner = next((m for m in state.apps.get_models() if m._meta.db_table == ref_table), None)
                targets.append((ref_table, ref_column, owner))
    return found


class ChangePrimaryKeyToBigint(BackgroundArgument, TriggerVersion, _PrimaryKeyOperation):
    """Expand: bigint shadows of the key and of every FK to it, kept equal by triggers."""

    requires_non_atomic = True

    def __init__(self, model_name, trigger_version=1, field=None, background=None):
        self.trigger_version = trigger_version
        #: Copy the rows in the background (True), inside migrate (False), or as BACKGROUND_MIN_ROWS says (None).
        self.background = background
        #: The key field as the new models declare it; the state then matches
        #: them exactly (absent in files written before it existed).
        self.field = field
        super().__init__(model_name)

    def deconstruct_kwargs(self):
        kwargs = self.with_trigger_version({"model_name": self.name})
        if self.field is not None:
            kwargs["field"] = self.field
        return self.with_background(kwargs)

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

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        if collecting(schema_editor):
            raise UnsafeOperationError(f"{self.describe()} reads the catalog to find foreign keys; "
                                       f"run it against the database (sqlmigrate cannot show it).")
        table, pk, refs = self._target(app_label, from_state, schema_editor)
        connection = schema_editor.connection
        refuse_primary_key_swap(connection, table)  # hook: issue 24, not on a partitioned table
        if not catalog.column_exists(connection, table, shadow_column(pk)) and \
                catalog.column_info(connection, table, pk)["type"] == "bigint":
            return []  # already bigint: nothing to do
        if catalog.identity_kind(connection, table, pk) not in ("a", "d") and catalog.column_info(
                connection, table, pk)["default"] is not None:
            raise UnsafeOperationError(
                f"{table}.{pk} is a serial key (its default is a sequence, not an identity): "
                f"ChangePrimaryKeyToBigint moves identity sequences and plain keys without a default. "
                f"Turn the serial into an identity column first (ALTER TABLE ... ALTER COLUMN ... DROP "
                f"DEFAULT; ADD GENERATED BY DEFAULT AS IDENTITY, with the sequence restarted past max(id)), "
                f"then run this migration again.")
        plan = []
        for ref_table, column, _ in [(table, pk, None), *refs]:
            # A referencing column that is its own table's key (a multi-table
            # child's <parent>_ptr) needs a unique index on its shadow too: its
            # primary key moves to the shadow at the swap.
            unique = catalog.primary_key_columns(connection, ref_table) == [column]
            plan += self._shadow(schema_editor, ref_table, column, unique=unique)
        # The key column's own other indexes (a Meta index over (c, id), one whose WHERE reads id) go
        # with it at the swap as much as the referencing columns' do.
        for ref_table, columns in columns_by_table([(table, pk), *refs]).items():
            plan += mirror_indexes(schema_editor, ref_table, columns)
        return plan

    def _shadow(self, schema_editor, table, column, unique):
        shadow = shadow_column(column)
        background = self.copies_in_background(schema_editor, table)
        plan = [sql.add_column(table, shadow, "bigint").but(label=f"add {table}.{shadow} bigint"),
                *install_trigger(schema_editor, table, "cast", column, shadow, "bigint",
                                 version=self.trigger_version),
                *copy_rows(table, shadow, sql.q(column), f"{sql.q(shadow)} IS DISTINCT FROM {sql.q(column)}",
                           f"{table}.bigint.{column}", background=background)]
        if unique:
            index = shadow_index_name(schema_editor, table, column)
            plan.append(sql.create_index_concurrently(sql.index_definition(table, index, [shadow], unique=True),
                                                      index, table))
        if not catalog.column_info(schema_editor.connection, table, column)["nullable"] and not background:
            plan += set_not_null(schema_editor, table, shadow, what=self.describe())  # else at the swap
        return plan

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table, pk, refs = self._target(app_label, to_state, schema_editor)
        plan = []
        for ref_table, column, _ in [(table, pk, None), *refs]:
            plan += undo_copy(schema_editor, ref_table, "cast", column, shadow_column(column),
                              f"{ref_table}.bigint.{column}")
        return plan

    def describe(self):
        return f"Change the primary key of {self.name} to bigint (shadow columns kept in step by triggers)"

    @property
    def migration_name_fragment(self):
        return f"{self.name_lower}_pk_bigint"


class FinishChangePrimaryKeyToBigint(_PrimaryKeyOperation):
    """Contract: swap the bigint key and foreign keys in, then validate the foreign keys.

    The int columns are archived (``pg.archive``); reversing keeps the bigint
    ones, which integer code uses unchanged. The swap is one transaction,
    so a failure leaves the expand state intact and a re-run redoes it.
    """

    stage = Stage.CONTRACT
    reversible = True  # the key stays bigint (pg.archive.keep_bigint_plan)
    requires_non_atomic = True

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        if collecting(schema_editor):
            raise UnsafeOperationError(f"{self.describe()} reads the catalog; run it against the database.")
        model = model_of(to_state, app_label, self.name)
        table, pk = table_of(model), model._meta.pk.column
        connection = schema_editor.connection
        # Foreign keys added after the expand (a model created in the same
        # release) were created bigint, so they have no shadow: only their
        # constraint moves to the swapped key.
        # Relations without a constraint and without a shadow have nothing to move.
        refs, direct = [], []
        for ref in referencing_closure(connection, to_state, table, pk, model):
            if catalog.column_exists(connection, ref.table, shadow_column(ref.column)):
                refs.append(ref)
            elif ref.constraint is not None:
                direct.append(ref)
        if not catalog.column_exists(connection, table, shadow_column(pk)):
            yield Call("swap key, sequence and foreign keys", lambda c: Skipped("already swapped"))
        else:
            # Indexes created on the int columns since the expand (a later
            # operation of the same release) need their copies too.
            for ref_table, columns in columns_by_table([(table, pk), *_pairs(refs)]).items():
                yield from mirror_indexes(schema_editor, ref_table, columns)
            for ref_table, column in [(table, pk), *_pairs(refs)]:
                shadow = shadow_column(column)
                yield require_copy_complete(self.describe(), ref_table, "cast", column, shadow,
                                            f"{ref_table}.bigint.{column}")
                yield require_columns_agree(self.describe(), ref_table, column, shadow,
                                            f"{sql.q(shadow)} IS DISTINCT FROM {sql.q(column)}")
                if not catalog.column_info(connection, ref_table, column)["nullable"]:
                    # Left out by an expand whose copy ran in the background.
                    yield from deferred_not_null(schema_editor, ref_table, shadow, what=self.describe())
            # Built now, after the copies above exist: the swap renames them.
            yield Transaction("swap key, sequence and foreign keys", swap_statements(schema_editor, table, pk, refs,
                                                                                    direct, app_label))
            yield archive.drop_set_aside_indexes()
            for ref_table, column in [(table, pk), *_pairs(refs)]:
                yield forget_progress(f"{ref_table}.bigint.{column}")
        # The foreign keys came back NOT VALID (same names): validate them, traffic continues.
        for ref in [*refs, *direct]:
            if ref.constraint is not None:
                yield sql.validate_constraint(ref.table, ref.constraint).but(label=f"validate {ref.constraint}")

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return archive.keep_bigint_plan(table_of(model_of(from_state, app_label, self.name)))  # hook: archive

    def describe(self):
        return f"Finish changing the primary key of {self.name} to bigint: swap the columns in"

    @property
    def migration_name_fragment(self):
        return f"finish_{self.name_lower}_pk_bigint"


def _pairs(refs):
    """``[(table, column)]`` of ``Reference`` objects."""
    return [(ref.table, ref.column) for ref in refs]


def _swap_in(schema_editor, table, column, app_label):
    """Archive the int ``column`` and rename its bigint shadow into its place, with the column's comment.

    The shadow was added as a bare bigint column; plain Django's ``ALTER ...
    TYPE bigint`` keeps the column's comment, so the swap carries it over.
    """
    comment = catalog.column_comment(schema_editor.connection, table, column)
    return [*archive.column_statements(schema_editor, table, column, app_label=app_label, reason="bigint",  # hook
                                       shadow=False),
            sql.rename_column(table, shadow_column(column), column),
            *([sql.comment_on_column(table, column, comment)] if comment is not None else [])]


def swap_statements(schema_editor, table, pk, refs, direct=(), app_label=None):
    """The statements of the one swap transaction: key, sequence, foreign keys, indexes, in that order.

    ``refs``: the shadowed ``Reference`` objects (their int columns go);
    ``direct``: foreign keys created bigint since the expand (only their
    constraint moves to the swapped key). Every foreign key of either is
    dropped first, then the keys move to their shadows (the table's, and
    each keyed reference's: a multi-table child's), then the foreign keys
    come back NOT VALID on the swapped columns.
    """
    connection = schema_editor.connection
    constraint = catalog.primary_key_name(connection, table)
    shadow = shadow_column(pk)
    statements = []
    # Indexes rebuilt on the shadows get their names back after the int
    # columns (and with them the originals) are dropped.
    renames = []
    for ref_table, columns in columns_by_table([(table, pk), *_pairs(refs)]).items():
        for name, unique_constraint, _kind, deferral, _ in catalog.dependent_indexes(connection, ref_table, columns):
            temporary = mirror.temporary_name(name)
            if unique_constraint:
                renames.append(sql.add_unique_using_index(ref_table, unique_constraint, temporary,
                                                          deferral).but(skip_if=None))
            else:
                renames.append(sql.rename_index(temporary, name, ref_table))
    for ref in [*refs, *direct]:
        if ref.constraint is not None:  # (a relation with db_constraint=False has none)
            statements.append(sql.drop_constraint_strict(ref.table, ref.constraint))
    for ref in refs:
        if ref.keyed:
            key = catalog.primary_key_name(connection, ref.table)
            statements += [sql.drop_constraint_strict(ref.table, key),
                           sql.add_primary_key_using_index(ref.table, key,
                                                           shadow_index_name(schema_editor, ref.table, ref.column))]
    for ref in refs:
        statements += drop_trigger_statements(schema_editor, ref.table, "cast", ref.column, shadow_column(ref.column))
    statements += drop_trigger_statements(schema_editor, table, "cast", pk, shadow)
    if catalog.identity_kind(connection, table, pk) in ("a", "d"):
        statements += [
            sql.add_identity(table, shadow),
            # Continue after the highest of the old sequence and the largest key.
            sql.continue_identity(table, shadow, pk),
            sql.drop_identity(table, pk),
        ]
    statements += [
        sql.drop_constraint_strict(table, constraint),
        sql.add_primary_key_using_index(table, constraint, shadow_index_name(schema_editor, table, pk)),
        *_swap_in(schema_editor, table, pk, app_label),
    ]
    for ref in refs:
        statements += _swap_in(schema_editor, ref.table, ref.column, app_label)
    statements += renames
    for ref in [*refs, *direct]:
        # The constraint's own definition: ON DELETE / ON UPDATE and
        # deferral stay what they were.
        if ref.constraint is not None:
            statements.append(sql.add_constraint_not_valid(ref.table, ref.constraint, ref.definition,
                                                           target=ref.target).but(skip_if=None))
    return statements
