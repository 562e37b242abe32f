"""Constraints added without a long lock.

Django's AddConstraint builds a unique index under a SHARE lock, or checks
every row (CHECK, FOREIGN KEY) while holding ACCESS EXCLUSIVE / SHARE ROW
EXCLUSIVE. Here the expensive half runs under SHARE UPDATE EXCLUSIVE, which
lets reads and writes through: the unique index is built CONCURRENTLY and
attached with ``USING INDEX``; CHECK and FK constraints are added ``NOT
VALID`` (instant, new rows are checked from then on) and validated in a
separate statement.
"""

from django.db.migrations.operations.fields import AlterField, FieldOperation
from django.db.migrations.operations.models import AddConstraint, IndexOperation
from django.db.models import Index

from ..exceptions import UnsafeOperationError
from ..pg import sql
from ..pg.runner import run
from ..pg.schema import collecting, field_variant, like_index_statement, model_of, statement_name, table_of
from ..pg.steps import (UNIQUE_VIOLATION, add_check, add_foreign_key, add_unique_via_index, duplicates_error,
                        replace_foreign_key)
from ..stages import Stage
from .base import SafeOperation, StandaloneOperation
from .columns import AddColumnNullable, new_column_plan


class AddUniqueConstraint(SafeOperation, AddConstraint):
    """A ``UniqueConstraint`` whose index is built without blocking writes.

    With a condition, expressions, INCLUDE or opclasses PostgreSQL can only
    express the constraint as a unique index, so only the index is built
    (concurrently) — exactly what Django itself creates in those cases.
    """

    requires_non_atomic = True

    def _index_only(self):
        c = self.constraint
        return bool(c.condition or c.expressions or c.include or c.opclasses)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(to_state, app_label, self.model_name)
        table = table_of(model)
        if self._index_only():
            text = sql.concurrently(self.constraint.create_sql(model, schema_editor))
            return [sql.create_index_concurrently(
                text, self.constraint.name, table,
                on_error=[(UNIQUE_VIOLATION, duplicates_error(table, list(self.constraint.fields)))],
            ).but(label="unique index concurrently")]
        columns = [model._meta.get_field(name).column for name in self.constraint.fields]
        return add_unique_via_index(schema_editor, table, columns, self.constraint.name, self.constraint.deferrable,
                                    self.constraint.nulls_distinct)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(from_state, app_label, self.model_name))
        if self._index_only():
            return [sql.drop_index_concurrently(self.constraint.name, table).but(label="drop")]
        return [sql.drop_constraint(table, self.constraint.name).but(label="drop")]

    def describe(self):
        return f"Add unique constraint {self.constraint.name} on {self.model_name} (index built concurrently)"


class AddCheckConstraint(SafeOperation, AddConstraint):
    """CHECK added NOT VALID (instant), then validated while traffic continues."""

    requires_non_atomic = True

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(to_state, app_label, self.model_name)
        table, name = table_of(model), self.constraint.name

        def violated(exc):
            run(schema_editor, [sql.drop_constraint(table, name)], label=self.describe())
            raise UnsafeOperationError(
                f"Existing rows of {table} violate check constraint {name} ({exc}). The constraint "
                f"was removed again so the schema is as it was. Fix those rows (Backfill), then "
                f"run the migration again."
            ) from exc

        return add_check(table, name, self.constraint._get_check_sql(model, schema_editor), on_violation=violated)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(from_state, app_label, self.model_name))
        return [sql.drop_constraint(table, self.constraint.name).but(label="drop")]

    def describe(self):
        return f"Add check constraint {self.constraint.name} on {self.model_name} (NOT VALID, then VALIDATE)"


class ValidateConstraint(StandaloneOperation, IndexOperation):
    """Validate a constraint added NOT VALID, under SHARE UPDATE EXCLUSIVE only."""

    requires_non_atomic = True

    def __init__(self, model_name, name):
        self.model_name = model_name
        self.name = name

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(to_state, app_label, self.model_name))
        return [sql.validate_constraint(table, self.name).but(label="validate")]

    def deconstruct_kwargs(self):
        return {"model_name": self.model_name, "name": self.name}

    def describe(self):
        return f"Validate constraint {self.name} on {self.model_name}"

    @property
    def migration_name_fragment(self):
        return f"validate_{self.model_name_lower}_{self.name.lower()}"


class AddForeignKey(AddColumnNullable):
    """A ForeignKey field: column, index CONCURRENTLY, constraint NOT VALID, VALIDATE.

    Adding the constraint takes SHARE ROW EXCLUSIVE on both tables for an
    instant (bounded by lock_timeout); checking the existing rows happens
    in VALIDATE, which blocks neither reads nor writes.
    """

    requires_non_atomic = True

    def __init__(self, model_name, name, field):
        super().__init__(model_name, name, field)
        self.requires_non_atomic = True

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        model, field = self.field_to_add(app_label, to_state)
        plan = new_column_plan(schema_editor, model, field)
        if field.db_constraint:
            plan += add_foreign_key(schema_editor, model, field)
        return plan

    def describe(self):
        return f"Add foreign key {self.model_name}.{self.name} (NOT VALID, then VALIDATE; index concurrently)"


class ReplaceForeignKey(StandaloneOperation, FieldOperation):
    """Contract: the relation's foreign key becomes what the models declare (its ON DELETE, or none).

    For an ``on_delete`` leaving a database-level variant (``DB_CASCADE``, ``DB_SET_NULL``,
    ``DB_SET_DEFAULT``): the old code deletes a parent row with one DELETE and counts on the
    constraint for its children, so the constraint keeps its action through the rollout (Django's
    state changed at expand) and changes here, once no old code runs. ``field`` (the field before
    the change, optional) lets the reverse put the old constraint back.
    """

    stage = Stage.CONTRACT
    requires_non_atomic = True  # VALIDATE runs outside a transaction

    def __init__(self, model_name, name, field=None):
        super().__init__(model_name, name, field)

    @property
    def reversible(self):
        return self.field is not None

    def _plan(self, app_label, schema_editor, state, field=None):
        model = model_of(state, app_label, self.model_name)
        rendered = model._meta.get_field(self.name)
        if field is None:
            return replace_foreign_key(schema_editor, model, rendered)
        with field_variant(rendered.remote_field, on_delete=field.remote_field.on_delete), \
                field_variant(rendered, db_constraint=field.db_constraint):
            return replace_foreign_key(schema_editor, model, rendered)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, to_state)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        if self.field is None:
            raise NotImplementedError(f"{self.describe()} cannot be reversed without field=.")
        return self._plan(app_label, schema_editor, to_state, self.field)

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "name": self.name}
        if self.field is not None:
            kwargs["field"] = self.field
        return kwargs

    def describe(self):
        return (f"Re-create the foreign key of {self.model_name}.{self.name} as the model declares it "
                f"(its on_delete; the old code relied on the old one)")

    @property
    def migration_name_fragment(self):
        return f"replace_fk_{self.model_name_lower}_{self.name_lower}"


class AlterFieldIndexes(SafeOperation, AlterField):
    """An ``AlterField`` that only adds or removes ``db_index`` / ``unique``.

    Names are Django's, so a later plain ``AlterField`` finds and drops them.
    """

    requires_non_atomic = True

    def _switch(self, app_label, schema_editor, old_state, new_state):
        old_model = model_of(old_state, app_label, self.model_name)
        new_model = model_of(new_state, app_label, self.model_name)
        old = old_model._meta.get_field(self.name)
        new = new_model._meta.get_field(self.name)
        table = table_of(new_model)
        plan = []
        if old.unique and not new.unique:
            name = schema_editor._create_index_name(table, [old.column], suffix="_uniq")
            # The field's own constraint, never a Meta constraint on the same
            # column (as Django's _alter_field excludes them too).
            meta = {constraint.name for constraint in old_model._meta.constraints}
            for found in schema_editor._constraint_names(old_model, [old.column], unique=True, primary_key=False,
                                                         exclude=meta):
                name = found
            plan.append(sql.drop_constraint(table, name).but(label=f"drop unique {name}"))
        # Django's truth table: the plain index goes when db_index goes or unique replaces it.
        by_lookup = old.db_index and not old.unique and not (new.db_index and not new.unique)
        if by_lookup:
            plan += [sql.drop_index_concurrently(name, table)
                     for name in self._field_indexes(schema_editor, old_model, old, like=False)]
        plan += self._like_plan(schema_editor, (old_model, old), (new_model, new), by_lookup)
        if new.db_index and not new.unique and not (old.db_index and not old.unique):
            statement = schema_editor._create_index_sql(new_model, fields=[new], concurrently=True)
            plan.append(sql.create_index_concurrently(statement, statement_name(statement), table))
        if new.unique and not old.unique:
            plan += add_unique_via_index(schema_editor, table, [new.column])
        return plan

    @classmethod
    def _like_plan(cls, schema_editor, old_side, new_side, by_lookup):
        """The ``_like`` index steps of Django's PostgreSQL schema editor, names included.

        Django removes a field's ``_like`` index two ways. With the plain
        index (``by_lookup``: db_index goes, or unique replaces it) it finds
        every one on the column in the catalog, and builds it again under the
        name computed from the column when the field keeps one. When unique
        goes, it drops only the name computed from the *current* column and
        table (``DROP INDEX IF EXISTS``): after a rename of the field, its
        column or its model that name misses, and plain Django keeps the old
        index. safemigrate does the same, or its database would differ from
        plain Django's from then on (and the next change Django makes by
        name would miss in the other).
        """
        (old_model, old), (new_model, _new) = old_side, new_side
        old_like, new_like = (like_index_statement(schema_editor, m, f) for m, f in (old_side, new_side))
        table = table_of(new_model)
        plan = []
        if by_lookup and old_like is not None:
            keep = statement_name(new_like) if new_like is not None else None
            found = cls._field_indexes(schema_editor, old_model, old, like=True)
            if keep is not None and keep not in found:
                # Built before the old one goes: the column is never without it.
                plan.append(sql.create_index_concurrently(new_like, keep, table).but(label="_like index concurrently"))
            plan += [sql.drop_index_concurrently(name, table).but(label=f"drop _like index {name} concurrently")
                     for name in found if name != keep]
        elif old_like is not None and old.unique and new_like is None:
            name = schema_editor._create_index_name(table, [old.column], suffix="_like")
            plan.append(sql.drop_index_concurrently(name, table).but(label=f"drop _like index {name} concurrently"))
        elif new_like is not None and old_like is None:
            plan.append(sql.create_index_concurrently(new_like, statement_name(new_like), table).but(
                label="_like index concurrently"))
        return plan

    @staticmethod
    def _field_indexes(schema_editor, model, field, like):
        """The field's own index (or its ``_like`` index), found as Django finds it.

        Django looks them up by column, not by name, when db_index goes:
        after a model rename the index keeps the old table's name. The
        computed name serves when nothing can be asked (``sqlmigrate``).
        """
        table = table_of(model)
        computed = schema_editor._create_index_name(table, [field.column], suffix="_like" if like else "")
        if collecting(schema_editor):
            return [computed]
        meta = {index.name for index in model._meta.indexes}
        found = schema_editor._constraint_names(model, [field.column], index=True, type_=Index.suffix,
                                                exclude=meta)
        return sorted(name for name in found if name.endswith("_like") == like) or [computed]

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._switch(app_label, schema_editor, from_state, to_state)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._switch(app_label, schema_editor, from_state, to_state)

    def describe(self):
        return f"Change the indexes of {self.model_name}.{self.name} concurrently"

    @property
    def migration_name_fragment(self):
        return f"alter_{self.model_name_lower}_{self.name_lower}_indexes"
