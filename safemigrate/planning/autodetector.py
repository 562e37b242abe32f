"""``makemigrations --safe``: Django detects the changes, this splits them.

Django's autodetector produces the operations a plain ``migrate`` would run.
Each one that would break the old code or stall traffic is rewritten into
expand operations (safe while the old code runs) and contract operations
(safe once it is gone). Per app, the expand operations stay in the
migrations Django planned; the contract operations go into one extra
migration at the end that depends on them, carries ``stage = "contract"``
and is held back by ``migrate`` until ``migrate_contract``.

Changes no strategy can make safe stop the command with the manual steps
instead of producing unsafe SQL.
"""

import contextlib
import datetime
import decimal
import functools
import re
import sys
import uuid
from dataclasses import dataclass, field

from django.db import migrations, models
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.migration import Migration

from .. import operations as safe
from ..operations.backfill import fill_with_field_default
from ..exceptions import UnsafeOperationError
from ..operations.type_copy import exclusion_refusal
from ..pg import mirror, triggers
from ..pg.copy_steps import in_place_type_change
from ..pg.steps import database_on_delete
from ..stages import Stage, operation_stage
from . import background, defaults, renames, rules
from .releases import ReleaseAwareArrangement


@dataclass
class Rewrite:
    expand: list
    contract: list = field(default_factory=list)
    #: What the old code may still do while only the expand part is applied.
    notes: list = field(default_factory=list)


class UnsafeChange(UnsafeOperationError):
    pass


#: Default values a generated Backfill passes as query parameters.
_PARAM_TYPES = (str, int, float, bool, decimal.Decimal, datetime.date, datetime.datetime, datetime.time,
                datetime.timedelta, uuid.UUID)

#: Django's column kinds (``get_internal_type()``) that store a default of a ``_PARAM_TYPES`` type as
#: psycopg sends it: their ``get_db_prep_save`` hands it on unchanged, or parses a string the column's own
#: input function reads the same way. (A JSON column, say, stores ``"x"`` as the JSON text ``'"x"'``.)
_PLAIN_COLUMNS = frozenset((
    "AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField", "SmallIntegerField",
    "PositiveIntegerField", "PositiveSmallIntegerField", "PositiveBigIntegerField", "FloatField", "DecimalField",
    "BooleanField", "CharField", "TextField", "SlugField", "FileField", "FilePathField", "DateField",
    "DateTimeField", "TimeField", "DurationField", "UUIDField", "GenericIPAddressField", "IPAddressField",
))


#: The per-row SQL for the current time an ``auto_now``/``auto_now_add`` column gets.
_AUTO_NOW_SQL = {"DateTimeField": "now()", "DateField": "CURRENT_DATE", "TimeField": "LOCALTIME"}


def _schema_default(field):
    """What Django's schema editor fills a NOT NULL column with when the field declares no default.

    ``("sql", expression)`` for ``auto_now``/``auto_now_add`` (plain Django
    evaluates the current time once), ``("value", "")`` for blank text fields
    (``b""`` for binary ones); None when the field gives its own default or
    none applies (``effective_default`` in Django's schema editor).
    """
    if (field.null or field.has_default() or field.has_db_default() or field.many_to_many
            or getattr(field, "generated", False) or field.primary_key):
        return None
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        sql = _AUTO_NOW_SQL.get(field.get_internal_type())
        return ("sql", sql) if sql else None
    if field.blank and field.empty_strings_allowed:
        return ("value", b"" if field.get_internal_type() == "BinaryField" else "")
    return None


def _is_non_atomic(operations):
    """Generated migrations are non-atomic when an operation needs it or works best so."""
    return any(getattr(op, "requires_non_atomic", False) or getattr(op, "prefers_non_atomic", False)
               for op in operations)


def _plain_parameter(field, default):
    """Whether ``default`` can fill ``field``'s column as a query parameter, as it is.

    The generated Backfill sends the Python value to psycopg; plain Django
    first passes it through the field's ``get_db_prep_save``. The two agree
    only for scalar columns: a JSONField encodes ``"x"`` or ``5`` as JSON
    (the raw value fails with "invalid input syntax for type json"), a
    BinaryField takes bytes (sent as bytea), an array, hstore or range
    column a value psycopg cannot adapt without the field, a field that
    reports a type of its own whatever its preparation makes. A datetime is only a parameter as
    an aware value for a DateTimeField: Django makes a naive one aware (and
    a DateField takes a datetime's date) in the project's time zone, which
    need not be the session's. A relation's default is its target's key: a
    scalar. Any other default is filled through the ORM.
    """
    kind = "relation" if field.is_relation else field.get_internal_type()
    if kind == "BinaryField":
        return isinstance(default, bytes)
    if kind != "relation" and kind not in _PLAIN_COLUMNS:
        return False
    if isinstance(default, datetime.datetime):
        return kind == "DateTimeField" and default.tzinfo is not None
    return isinstance(default, _PARAM_TYPES)


def _column(field, name):
    return rules.column_name(field, name)


def _model_name(operation):
    """The lower-case model name an operation acts on, or None (ReleaseNames, raw SQL, ...)."""
    for attribute in ("model_name_lower", "name_lower"):
        try:
            return getattr(operation, attribute)
        except AttributeError:
            continue
    return None


def _model_of(operation):
    """The lower-case model name an operation acts on (field and option operations name it differently)."""
    return getattr(operation, "model_name_lower", None) or operation.name_lower


def _rerunnable(operation):
    """safemigrate's operations and state-only ones can run again after a kill."""
    if operation.__class__.__module__.startswith("safemigrate"):
        return True
    return isinstance(operation, migrations.SeparateDatabaseAndState) and not operation.database_operations


class SafeMigrationAutodetector(ReleaseAwareArrangement, MigrationAutodetector):
    """The autodetector behind ``makemigrations --safe``."""

    def __init__(self, from_state, to_state, questioner=None):
        super().__init__(from_state, to_state, questioner)
        # Django warns that a callable default on a unique field gives every
        # existing row the same value and asks whether to go on. --safe gives
        # each row its own value (per-row backfill), so there is nothing to ask.
        self.questioner.ask_unique_callable_default_addition = lambda field_name, model_name: None
        #: Models the migration being split creates before the operation at hand.
        self._created_here = set()

    # -- what Django's autodetector leaves for a second run ------------------

    def generate_altered_db_table(self):
        with self._turned_unmanaged_kept():
            super().generate_altered_db_table()

    def generate_altered_db_table_comment(self):
        with self._turned_unmanaged_kept():
            super().generate_altered_db_table_comment()

    @contextlib.contextmanager
    def _turned_unmanaged_kept(self):
        """Models turned unmanaged in this change count as kept unmanaged models.

        Django's autodetector records only ``managed=False`` for them
        (``AlterModelOptions``) and leaves a ``db_table`` or
        ``db_table_comment`` changed in the same edit to the next
        ``makemigrations`` run, so ``makemigrations --check`` is never clean
        after one. Both are state-only for an unmanaged model (Django runs no
        SQL for it, and they come after the ``managed`` change), so they are
        written now, as Django writes them for a model that was unmanaged
        already. (A model turned managed is not widened: there the next run's
        operations run SQL on the table.)
        """
        kept = self.kept_unmanaged_keys
        self.kept_unmanaged_keys = kept | (self.old_model_keys & self.new_unmanaged_keys)
        try:
            yield
        finally:
            self.kept_unmanaged_keys = kept

    def changes(self, graph, trim_to_apps=None, convert_apps=None, migration_name=None):
        changes = self._detect_changes(convert_apps, graph)
        changes = self.split_stages(changes)
        changes = self.arrange_for_graph(changes, graph, migration_name)
        if trim_to_apps:
            changes = self._trim_to_apps(changes, trim_to_apps)
        return changes

    # -- splitting ---------------------------------------------------------

    def warn_possible_renames(self, app_label, operations):
        """A remove + add of the same kind of field on one model may be an unanswered rename.

        As remove + add, the contract step drops the old column and its data;
        say so instead of letting a --noinput run lose it quietly.
        """
        removed = {(op.model_name_lower, op.name): op for op in operations
                   if isinstance(op, migrations.RemoveField)}
        log = getattr(self.questioner, "log", None) or (lambda message: sys.stderr.write(message + "\n"))
        for op in operations:
            if not isinstance(op, migrations.AddField):
                continue
            for (model, name), _ in removed.items():
                old = self.old_field(app_label, model, name)
                if (model == op.model_name_lower and name != op.name_lower and old is not None
                        and type(old) is type(op.field)):
                    log(f"Warning: {app_label}.{model}.{name} is removed and {op.name} added. If this is a "
                        f"rename, run makemigrations --safe interactively and answer yes: as remove + add, "
                        f"the contract migration drops {name} and its data.")

    def split_stages(self, changes):
        problems = []
        # Issue 23: the rename strategy looks at Django's operations of the whole release.
        self._release = {app: [op for m in migrations_ for op in m.operations] for app, migrations_ in changes.items()}
        for app_label, app_migrations in changes.items():
            for migration in app_migrations:
                self.warn_possible_renames(app_label, migration.operations)
            contract_ops, notes = [], []
            for migration in app_migrations:
                problems.extend(f"{app_label}: {message}"
                                for message in self._replaced_join_tables(app_label, migration.operations))
                # Names of tables kept for the old code step aside first, before
                # anything this migration creates can want them.
                expand_ops = self._release_names(app_label, migration.operations)
                deleted = {op.name_lower for op in migration.operations if isinstance(op, migrations.DeleteModel)}
                created = set()
                for operation in migration.operations:
                    if isinstance(operation, migrations.CreateModel):
                        created.add(operation.name_lower)
                    try:
                        rewrite = self.rewrite(app_label, operation, deleted, created)
                    except UnsafeChange as exc:
                        problems.append(f"{app_label}: {exc}")
                        continue
                    expand_ops.extend(rewrite.expand)
                    contract_ops.extend(rewrite.contract)
                    notes.extend(rewrite.notes)
                try:
                    expand_ops = self._table_renames_first(app_label, expand_ops)
                except UnsafeChange as exc:
                    problems.append(f"{app_label}: {exc}")
                migration.operations = expand_ops
                if _is_non_atomic(expand_ops):
                    migration.atomic = False
                if contract_ops or notes:
                    migration.stage = str(Stage.EXPAND)
                    migration.safemigrate_notes = list(notes)
            app_migrations[:] = [chunk for migration in app_migrations for chunk in self.split_by_atomicity(migration)]
            contract_ops = self._without_deleted_models(app_migrations, contract_ops)
            # Compatibility views go first: they use columns that other contract steps drop.
            contract_ops.sort(key=lambda op: not isinstance(op, safe.DropCompatibilityView))
            if contract_ops:
                last = app_migrations[-1]
                contract = Migration(f"{last.name}_contract", app_label)
                contract.dependencies = [(app_label, last.name)]
                contract.operations = contract_ops
                contract.stage = str(Stage.CONTRACT)
                contract.atomic = not _is_non_atomic(contract_ops)
                contract.safemigrate_notes = []
                app_migrations.append(contract)
        if problems:
            raise UnsafeChange(
                "makemigrations --safe found changes it cannot make without downtime:\n  - "
                + "\n  - ".join(problems)
            )
        for app_migrations in changes.values():
            for migration in app_migrations:
                if getattr(migration, "stage", None):
                    migration.suggest_name = functools.partial(self._stage_name, migration)
        return changes

    def _table_renames_first(self, app_label, operations):
        """A ``Meta.db_table`` change goes before everything else the release does to its model.

        Django emits ``AlterModelTable`` after the model's field changes. But
        steps such as a rename via copy name their trigger and progress after
        the table they are installed on, and their contract half looks them up
        under the table's final name: so the table is renamed first, and every
        later step works on its final name. The view left under the old name
        uses every column the table had then, and PostgreSQL refuses to change
        the type of a column a view uses, or to drop it: such a change in the
        same release is refused (contract drops the views first).
        """
        renames = [op for op in operations if isinstance(op, safe.AlterModelTableWithView)]
        if not renames:
            return operations
        ordered = [op for op in operations if not isinstance(op, safe.AlterModelTableWithView)]
        for rename in renames:
            model = rename.name_lower
            for op in ordered:
                if _model_name(op) == model and self._changes_column_type(app_label, op):
                    raise UnsafeChange(
                        f"{rename.name}: Meta.db_table changes in the same release as {op.describe()}. The old code "
                        f"reads the old table name through a view until contract, and PostgreSQL refuses to change "
                        f"the type of a column a view uses (Django re-states it to change a comment too), or to "
                        f"drop it. Safe sequence: change the field in one "
                        f"release (makemigrations --safe, deploy, migrate_contract), then Meta.db_table in the next.")
            # Right after the names released and the models renamed (a renamed
            # model's table change names it by its new name): before any step
            # that names the table, a foreign key another model adds included
            # (Django runs it at the end of its schema editor, after this step).
            renaming = (safe.ReleaseNames, migrations.RenameModel)
            position = next((i for i, op in enumerate(ordered) if not isinstance(op, renaming)), len(ordered))
            for i, op in enumerate(ordered):
                if isinstance(op, migrations.RenameModel) and op.new_name_lower == model:
                    position = max(position, i + 1)
            leaving = self._join_table_removals(app_label, model, ordered)
            moved = {id(op) for op in leaving}
            position -= sum(1 for op in ordered[:position] if id(op) in moved)
            ordered = [op for op in ordered if id(op) not in moved]
            ordered[position:position] = [*leaving, rename]
        return ordered

    def _join_table_removals(self, app_label, model, operations):
        """The steps removing many-to-many fields of ``model``, which go before its table rename.

        The rename carries along the auto-created join tables of the fields
        the model has at that point (their names follow the model's table).
        A removed field's join table is not the new code's: it stays for the
        old code under its old name until contract (``DropTable``), and its
        foreign keys go at expand (``DropForeignKeys``), both by that name.
        Renamed along, it kept its foreign keys (they were looked for under
        the old name, a view by then), and the new code's deletes of the rows
        they point at failed for the whole rollout.
        """
        tables, steps = set(), []
        for op in operations:
            if not (isinstance(op, migrations.SeparateDatabaseAndState) and not op.database_operations):
                continue
            for removal in op.state_operations:
                if not (isinstance(removal, migrations.RemoveField) and removal.model_name_lower == model):
                    continue
                old = self.old_field(app_label, removal.model_name, removal.name)
                if old is not None and old.many_to_many:
                    rendered = self.from_state.apps.get_model(app_label, removal.model_name)._meta.get_field(
                        removal.name)
                    tables.add(rendered.m2m_db_table())
                    steps.append(op)
                    break
        steps += [op for op in operations if isinstance(op, safe.DropForeignKeys) and op.table_name in tables]
        chosen = {id(op) for op in steps}
        return [op for op in operations if id(op) in chosen]

    def _changes_column_type(self, app_label, op):
        """Whether an expand step changes the type (or collation) of an existing column, or drops one.

        A plain ``AlterField`` that changes ``db_comment`` counts: Django
        re-states the column's type in the same ``ALTER COLUMN ... TYPE``
        statement, which PostgreSQL refuses on a column a view uses.
        """
        if isinstance(op, safe.ChangeTypeViaCopy):
            return True
        if isinstance(op, safe.FinishChangeTypeViaCopy):
            return op.stage is Stage.EXPAND
        if type(op) is migrations.AlterField:
            old = self.old_field(app_label, op.model_name, op.name)
            if old is None or old.many_to_many:
                return False
            old_type, new_type = rules.column_types(old, op.field, self.from_state, self.to_state, app_label,
                                                    op.model_name)
            return (old_type != new_type
                    or getattr(old, "db_collation", None) != getattr(op.field, "db_collation", None)
                    or (old.db_comment or None) != (op.field.db_comment or None))
        return False

    def _replaced_join_tables(self, app_label, operations):
        """Refusals for a many-to-many field removed and added again under the same name.

        Django 6.1 writes a changed many-to-many target as RemoveField +
        AddField (older versions as AlterField). Either way the new join
        table has the old one's name, and the old code keeps using that table
        until contract, so the change is refused the same way on every Django.
        """
        removed = {(op.model_name_lower, op.name_lower) for op in operations
                   if isinstance(op, migrations.RemoveField)}
        for op in operations:
            if not (isinstance(op, migrations.AddField) and (op.model_name_lower, op.name_lower) in removed):
                continue
            old = self.old_field(app_label, op.model_name, op.name)
            if old is not None and old.many_to_many and op.field.many_to_many:
                try:
                    self._refuse_relation_change(app_label, op, old, op.field)
                except UnsafeChange as exc:
                    yield str(exc)

    def _release_names(self, app_label, operations):
        """ReleaseNames steps that go first: tables and columns kept for the old code step aside.

        Django creates models and fields before it removes others, so a name
        a kept table or column holds must be released before anything in the
        same migration can want it.
        """
        steps = []
        for op in operations:
            if isinstance(op, migrations.DeleteModel):
                if not self._runs_sql(app_label, op):
                    continue  # proxy or unmanaged: no table (a proxy's fields are its concrete model's)
                steps += [safe.ReleaseNames(table) for table in [self.model_table(self.from_state, app_label, op.name),
                                                                 *self._auto_m2m_tables(app_label, op.name)]]
            elif isinstance(op, migrations.RemoveField):
                old = self.old_field(app_label, op.model_name, op.name)
                if old is not None and not old.many_to_many and (old.db_index or old.unique or old.is_relation):
                    steps.append(safe.ReleaseNames(self.model_table(self.from_state, app_label, op.model_name),
                                                   columns=[_column(old, op.name)]))
        return steps

    @staticmethod
    def _without_deleted_models(app_migrations, contract_ops):
        """Contract steps on a model deleted in the same change go: its DropTable takes everything.

        They would also look the model up in a state it already left at
        expand (RemoveModelSafely) and fail.
        """
        deleted = {op.name_lower for migration in app_migrations for op in migration.operations
                   if isinstance(op, safe.RemoveModelSafely)}
        return [op for op in contract_ops
                if isinstance(op, safe.DropTable) or str(getattr(op, "model_name", "") or "").lower() not in deleted]

    @staticmethod
    def split_by_atomicity(migration):
        """Keep Django's own operations out of non-atomic migrations.

        safemigrate's operations ask the catalog before each step, so a
        non-atomic migration made of them can be re-run after a kill. Django's
        (CreateModel, AddField, ...) cannot: re-run, they fail on what the
        killed run already created. Runs of consecutive Django operations go
        into atomic migrations of their own, in order; the last chunk keeps the
        original name so dependencies on it still mean "all of it".
        """
        if getattr(migration, "atomic", True) or all(_rerunnable(op) for op in migration.operations):
            return [migration]
        groups = []
        for operation in migration.operations:
            safe_op = _rerunnable(operation)
            if groups and groups[-1][0] == safe_op:
                groups[-1][1].append(operation)
            else:
                groups.append((safe_op, [operation]))
        chunks = []
        for index, (safe_op, operations) in enumerate(groups):
            last = index == len(groups) - 1
            chunk = migration if last else Migration(f"{migration.name}_part{index + 1}", migration.app_label)
            chunk.operations = operations
            chunk.atomic = not _is_non_atomic(operations)
            if chunks:
                chunk.dependencies = [(migration.app_label, chunks[-1].name)]
                chunk.initial = False
            else:
                chunk.dependencies = list(migration.dependencies)
                chunk.initial = migration.initial
            chunk.stage = getattr(migration, "stage", None)
            chunk.safemigrate_notes = getattr(migration, "safemigrate_notes", []) if last else []
            chunks.append(chunk)
        return chunks

    @staticmethod
    def _stage_name(migration):
        if migration.initial:
            return f"{migration.stage}_initial"
        # Like Django's suggest_name, but operations without a name fragment
        # (state-only wrappers) are skipped instead of giving a timestamp name.
        fragments = [re.sub(r"\W+", "_", op.migration_name_fragment) for op in migration.operations
                     if op.migration_name_fragment]
        base = fragments[0] if fragments else "changes"
        for fragment in fragments[1:]:
            if len(f"{base}_{fragment}") > 52:
                base = f"{base}_and_more"
                break
            base = f"{base}_{fragment}"
        return f"{migration.stage}_{base}"[:60]

    def old_field(self, app_label, model_name, name):
        try:
            return self.from_state.models[app_label, model_name.lower()].get_field(name)
        except (KeyError, LookupError):
            return None

    def column_type(self, state, app_label, model_name, name, field):
        """The column type of a field; relations need the rendered model to resolve their target."""
        from django.db import connection

        try:
            return field.db_parameters(connection)["type"]
        except ValueError:
            model = state.apps.get_model(app_label, model_name)
            return model._meta.get_field(name).db_parameters(connection)["type"]

    def changes_database(self, app_label, model_name, old, new, name=None):
        """Whether Django's AlterField from ``old`` to ``new`` would run any SQL (the linter's rule)."""
        return rules.alter_runs_sql(old, new, name or old.name or new.name, self.from_state, app_label, model_name,
                                    comments=True)

    def _auto_m2m_tables(self, app_label, model_name):
        """Join tables Django created for many-to-many relations from or to the model.

        The model's own relations only: a multi-table child sees its parents'
        many-to-many fields too, and their join tables stay with the parent.
        """
        model = self.from_state.apps.get_model(app_label, model_name)
        tables = set()
        for candidate in model._meta.get_fields(include_parents=False, include_hidden=True):
            if candidate.many_to_many:
                remote = candidate if not candidate.auto_created or candidate.concrete else candidate.remote_field
                through = remote.remote_field.through
                if through is not None and through._meta.auto_created:
                    tables.add(through._meta.db_table)
        return sorted(tables)

    def model_table(self, state, app_label, model_name):
        model_state = state.models[app_label, model_name.lower()]
        return model_state.options.get("db_table") or f"{app_label}_{model_state.name_lower}"

    # -- the rewrite rules -------------------------------------------------

    #: Operations that only take something off a model's table.
    TABLE_OPTION_REMOVALS = (migrations.RemoveIndex, migrations.RemoveConstraint, migrations.AlterUniqueTogether,
                             migrations.AlterIndexTogether)

    #: Operations that change a model's table (or its state) field by field.
    TABLE_CHANGES = (migrations.AddField, migrations.AlterField, migrations.RemoveField, migrations.RenameField,
                     migrations.AddIndex, migrations.AddConstraint, *TABLE_OPTION_REMOVALS)

    def rewrite(self, app_label, operation, deleted_models=(), created_models=()):
        """Expand and contract steps for one of Django's operations.

        ``deleted_models`` / ``created_models``: models the same migration
        deletes, and creates before ``operation``.
        """
        if isinstance(operation, self.TABLE_CHANGES) and _model_of(operation) in created_models:
            # Django adds a new model's relations (and what waits for other
            # models) after its CreateModel. The table is new and empty and
            # no old code knows it: Django's own operation is safe as it is.
            return Rewrite([operation])
        if isinstance(operation, (*self.TABLE_OPTION_REMOVALS, migrations.RemoveField)) and \
                _model_of(operation) in deleted_models:
            # Django removes a deleted model's indexes, constraints and
            # unique_together before the model itself (6.1 emits each one),
            # and sometimes a field (a multi-table child's parent link).
            # The table stays for the old code until contract, and so does
            # what guards its data: state only; DropTable takes them along.
            return Rewrite([migrations.SeparateDatabaseAndState(state_operations=[operation])])
        handler = getattr(self, f"rewrite_{operation.__class__.__name__}", None)
        if handler is None or operation.__class__.__module__.startswith("safemigrate"):
            return Rewrite([operation])
        self._created_here = set(created_models)
        if not self._runs_sql(app_label, operation):
            # Unmanaged and proxy models: Django's operation changes the state
            # only, and so must ours (a DropTable at contract would drop a
            # table Django never owned).
            return Rewrite([operation])
        return self.in_background(app_label, handler(app_label, operation))

    def in_background(self, app_label, rewrite):
        """Copies of tables at or above BACKGROUND_MIN_ROWS run in the background (``planning.background``)."""
        cache = self.__dict__.setdefault("_estimated_rows", {})

        def table_of(op):
            # The rows are in the table as it is now: a model renamed in this
            # release is found under its old name.
            name = _model_of(op).lower()
            return self.model_table(self.from_state, app_label, self.renamed_models.get((app_label, name), name))

        return background.mark_background(rewrite, table_of, cache)

    def _runs_sql(self, app_label, operation):
        """False when Django runs no SQL for the model ``operation`` acts on (unmanaged, proxy).

        Each name is judged in the state it belongs to: a deleted model and a
        renamed model's old name as they were, a created model and a new name
        as they will be (a concrete model replaced by a proxy of the same name
        still has its table), any other in both.
        """
        if hasattr(operation, "model_name"):  # field and index operations: the others name fields
            judged = [(operation.model_name, (self.from_state, self.to_state))]
        elif isinstance(operation, migrations.DeleteModel):
            judged = [(operation.name, (self.from_state,))]
        elif isinstance(operation, migrations.CreateModel):
            judged = [(operation.name, (self.to_state,))]
        elif isinstance(operation, migrations.RenameModel):
            judged = [(operation.old_name, (self.from_state,)), (operation.new_name, (self.to_state,))]
        else:
            judged = [(getattr(operation, "name", None), (self.from_state, self.to_state))]
        for name, states in judged:
            for state in states:
                if name and (app_label, str(name).lower()) in state.models and \
                        not rules.runs_sql_on(state, app_label, name):
                    return False
        return True

    def rewrite_AddField(self, app_label, op):
        field = op.field
        self._refuse_reused_column(app_label, op)
        if getattr(field, "generated", False):
            return self._generated_field(op)
        implicit = _schema_default(self._variant(field, null=False))
        if implicit is not None and (not field.null or implicit[0] == "sql"):
            return self._schema_default_field(op, *implicit)
        if field.null and not field.many_to_many and self._constant_default(field):
            # Plain Django fills the existing rows with the default and drops
            # it at once; rows the old code writes during the rollout must get
            # it as well (they exist "before" the change), so the database
            # default stays until contract.
            return Rewrite([safe.AddColumnNullable(op.model_name, op.name, field,
                                                   preserve_default=op.preserve_default)],
                           [safe.DropColumnDefault(op.model_name, op.name)],
                           [f"insert into {op.model_name} without {op.name}: the database default fills it"])
        if (field.null and not field.many_to_many and not field.is_relation and field.has_default()
                and callable(field.default) and not field.has_db_default()):
            # Plain Django gives every existing row the callable's value; the
            # rows the old code inserts during the rollout count as existing.
            return self._callable_default(app_label, op)
        if field.many_to_many or (field.null and not (field.unique or field.db_index) and not field.is_relation):
            return Rewrite([op])
        if field.is_relation:
            return Rewrite([safe.AddForeignKey(op.model_name, op.name, field)])
        if field.null:
            return Rewrite([safe.AddColumnNullable(op.model_name, op.name, field)])
        if field.has_db_default():
            return Rewrite([safe.AddColumnNullable(op.model_name, op.name, field)])
        if field.has_default() and callable(field.default):
            return self._callable_default(app_label, op)
        # A constant default (the model's, or a one-off given to the questioner).
        contract = [] if field.has_db_default() else [safe.DropColumnDefault(op.model_name, op.name)]
        return Rewrite(
            [safe.AddColumnNullable(op.model_name, op.name, field, preserve_default=op.preserve_default)],
            contract,
            [f"insert into {op.model_name} without {op.name}: the database default fills it"],
        )

    def _refuse_reused_column(self, app_label, op):
        """A new field whose column is another field's in the models the old code runs.

        Plain Django drops that column with the removed (or moved) field and
        creates it again for the new one: the values go. During the rollout
        the old code still reads and writes the column as the other field, so
        neither the drop nor the new definition can happen before contract,
        and one column cannot be both fields in between.
        """
        if op.field.many_to_many:
            return
        column = _column(op.field, op.name)
        model = self.from_state.models.get((app_label, op.model_name_lower))
        for name, old in (model.fields.items() if model else ()):
            if name != op.name and not old.many_to_many and _column(old, name) == column:
                raise UnsafeChange(
                    f"{op.model_name}.{op.name}: the new field takes column {column!r}, which is {name}'s in the "
                    f"models the old code runs. Plain Django drops that column and creates it again (its values "
                    f"go); during the rollout the old code still reads and writes it as {name}, so it can be "
                    f"neither dropped nor redefined before contract. Safe sequence: remove or move {name} in one "
                    f"release (makemigrations --safe; its column goes at contract), add {op.name} in the next. To "
                    f"keep the values instead, keep the field and change it in place: rename {name} to {op.name} "
                    f"with the same db_column (state-only), then change its attributes in a release of its own.")

    def _generated_field(self, op):
        """A ``GeneratedField`` added to an existing table.

        A VIRTUAL column (``db_persist=False``: PostgreSQL 18, Django 6.1) is
        computed when read: adding it is a catalog change, as in plain
        Django. A STORED one makes PostgreSQL compute the expression for every
        row while it rewrites the table under ACCESS EXCLUSIVE, and no
        PostgreSQL statement turns an ordinary column into a generated one
        later: refused, with the ways around it.
        """
        if not getattr(op.field, "db_persist", True):
            return Rewrite([op])
        raise UnsafeChange(
            f"{op.model_name}.{op.name}: adding a stored GeneratedField (db_persist=True) to an existing table "
            f"makes PostgreSQL rewrite the whole table under ACCESS EXCLUSIVE, computing the expression for "
            f"every row; every query on the table waits until it is done, and PostgreSQL has no statement that "
            f"turns an ordinary column into a stored generated one afterwards. Safe sequence: on PostgreSQL 18 "
            f"with Django 6.1 or later, use db_persist=False (a virtual column, computed when read, added "
            f"instantly); otherwise add an ordinary field with null=True that the code keeps equal to the "
            f"expression (in save() or a pgtrigger trigger), fill the existing rows with "
            f"safemigrate.operations.Backfill (set={{{op.name!r}: '<the expression in SQL>'}}), then make it "
            f"NOT NULL in a later release — one makemigrations --safe release per step. (A table small enough "
            f"to rewrite within lock_timeout can take the stored column with plain makemigrations.)")

    def _schema_default_field(self, op, kind, value):
        """A NOT NULL field added without a default that Django's schema editor fills anyway.

        ``auto_now``/``auto_now_add`` columns get the current time, blank text
        fields ``''``. The rows the old code inserts during the rollout must
        get them too: the current time comes from a per-row database default
        (``now()``), the empty string from a constant one, both dropped at
        contract as plain Django drops its one-off default at once.
        """
        field = op.field
        note = f"insert into {op.model_name} without {op.name}: the database default fills it"
        if kind == "value":
            return Rewrite([safe.AddColumnNullable(op.model_name, op.name, self._variant(field, default=value),
                                                   preserve_default=False)],
                           [safe.DropColumnDefault(op.model_name, op.name)], [note])
        # Existing rows get the time of the migration (the column's constant
        # default as it is added, as plain Django gives them); the old code's
        # rows, which count as existing, the time of their insert. A nullable
        # field too: plain Django fills every row that exists at migrate.
        contract = [] if field.null else [safe.SetNotNull(op.model_name, op.name, field, stage="contract")]
        return Rewrite([safe.AddColumnNullable(op.model_name, op.name, self._variant(field, null=True)),
                        safe.SetDatabaseDefault(op.model_name, op.name, value)],
                       [*contract, safe.DropColumnDefault(op.model_name, op.name)],
                       [f"insert into {op.model_name} without {op.name}: the database default gives each new row "
                        f"the time of its insert"])

    def _callable_default(self, app_label, op):
        """A field whose default is a callable: one value per row, for the old code's rows too.

        A one-off default (``preserve_default=False``: the answer to
        makemigrations' question, ``timezone.now`` for an ``auto_now_add``
        field) fills the rows but leaves the models: the state ends without
        it, as plain Django's does.
        """
        field = op.field
        nullable = field.clone()
        nullable.null = True
        final = field if op.preserve_default else self._variant(field, default=models.NOT_PROVIDED)
        sql = defaults.sql_for(field.default, field)
        column = _column(field, op.name)
        expand = [safe.AddColumnNullable(op.model_name, op.name, nullable, preserve_default=op.preserve_default)]
        contract = []
        token = uuid.uuid4().hex[:8]
        base = f"{app_label}.{op.model_name_lower}.{op.name}"
        if sql:
            expand.append(safe.SetDatabaseDefault(op.model_name, op.name, sql))
            if not (getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)):
                # (An auto_now column is added with the time of the migration
                # in every row, as in plain Django: there is nothing to fill.)
                expand.append(safe.Backfill(op.model_name, set={op.name: sql}, where=f'"{column}" IS NULL',
                                            reverse_set={}, name=f"{base}.fill.{token}", idempotent=True))
            contract.append(safe.DropColumnDefault(op.model_name, op.name))
        else:
            extra = {} if op.preserve_default else {"default": field.default}
            fill = functools.partial(fill_with_field_default, app_label=app_label,
                                     model_name=op.model_name, field_name=op.name, **extra)
            expand.append(safe.RunPythonBatched(op.model_name, fill, reverse_code=safe.RunPythonBatched.noop,
                                                name=f"{base}.fill.{token}", idempotent=True))
            if not field.null:
                # Rows the old code inserted during the rollout (no DB default
                # can compute this value) are filled once more before NOT NULL.
                # A nullable field is not: a NULL there may be the new code's.
                contract.append(safe.RunPythonBatched(op.model_name, fill, reverse_code=safe.RunPythonBatched.noop,
                                                      name=f"{base}.final-fill.{token}", idempotent=True))
        if field.null:
            return Rewrite(expand, contract,
                           [f"insert into {op.model_name} without {op.name}: "
                            + ("the database default gives each new row its own value" if sql else
                               "the column stays NULL (no SQL expression computes this default)")])
        set_not_null = safe.SetNotNull(op.model_name, op.name, final, stage="contract")
        # With a DB default: NOT NULL, then drop the default. Without: fill
        # the old code's late inserts first, then NOT NULL.
        contract = [set_not_null, *contract] if sql else [*contract, set_not_null]
        return Rewrite(expand, contract,
                       [f"insert into {op.model_name} without {op.name}: "
                        + ("the database default gives each new row its own value" if sql else
                           "the column stays NULL until the contract step fills it")])

    def rewrite_RemoveField(self, app_label, op):
        old = self.old_field(app_label, op.model_name, op.name)
        if old is None:
            return Rewrite([op])
        if old.many_to_many:
            # The rendered field knows the through model and the real table
            # name: the field's own db_table, or one derived from the model's
            # (possibly custom) table.
            rendered = self.from_state.apps.get_model(app_label, op.model_name)._meta.get_field(op.name)
            if not rendered.remote_field.through._meta.auto_created:
                return Rewrite([op])
            table = rendered.m2m_db_table()
            return Rewrite([migrations.SeparateDatabaseAndState(state_operations=[op]), safe.DropForeignKeys(table)],
                           [safe.DropTable(table)],
                           [f"read and write {op.model_name}.{op.name} (its table stays until contract)"])
        self._refuse_removed_database_cascade(op, old)
        column = _column(old, op.name)
        return Rewrite(
            [safe.RemoveFieldSafely(op.model_name, op.name)],
            [safe.DropColumn(op.model_name, column, field=old.clone())],
            [f"read and write {op.model_name}.{op.name}; the new code leaves it NULL"],
        )

    def rewrite_DeleteModel(self, app_label, op):
        table = self.model_table(self.from_state, app_label, op.name)
        tables = [table, *self._auto_m2m_tables(app_label, op.name)]
        return Rewrite([safe.RemoveModelSafely(op.name), *[safe.DropForeignKeys(t) for t in tables]],
                       [safe.DropTable(t) for t in reversed(tables)],
                       [f"use model {op.name} (its table stays until contract)"])

    def rewrite_RenameField(self, app_label, op):
        old = self.old_field(app_label, op.model_name, op.old_name)
        if old is not None and old.db_column:
            return Rewrite([op])  # the column keeps its name: state-only
        if old is not None and old.many_to_many:
            old_table = self.from_state.apps.get_model(app_label, op.model_name)._meta.get_field(
                op.old_name).m2m_db_table()
            new_table = self.to_state.apps.get_model(app_label, op.model_name)._meta.get_field(
                op.new_name).m2m_db_table()
            if old_table == new_table:
                return Rewrite([op])  # the join table keeps its name: state-only
            raise UnsafeChange(
                f"{op.model_name}.{op.old_name}: renaming a many-to-many field renames its join table "
                f"({old_table} -> {new_table}), and the old code's queries on it break. Keep the table, in two "
                f"releases: first add db_table={old_table!r} to {op.old_name} (its current name: no SQL), deploy; "
                f"then rename the field keeping that db_table (the rename is then state-only).")
        if old is None:
            return Rewrite([safe.RenameViaCopy(op.model_name, op.old_name, op.new_name,
                                               trigger_version=triggers.VERSION)],
                           [safe.FinishRenameViaCopy(op.model_name, op.old_name, op.new_name)])
        return self.rename_column(app_label, op, old, op.new_name)

    def rename_column(self, app_label, op, old, new_name, new=None):
        """THE choice of how a column is renamed: a field rename, or (``new`` given) a ``db_column`` change.

        Through a view (no rows copied) wherever one can serve
        (``planning.renames.choose``); otherwise through a copy, with the
        reason printed. ``op`` is Django's ``RenameField`` or ``AlterField``.
        """
        model = op.model_name
        old_name = op.old_name if new is None else op.name
        old_column = _column(old, old_name)
        new_column = _column(old, new_name) if new is None else _column(new, op.name)
        strategy = renames.choose(app_label, model, old_column, new_name, self.from_state, self.to_state,
                                  getattr(self, "_release", {}).get(app_label, []))
        note = f"read and write {model}.{old_name} (the view {self.model_table(self.from_state, app_label, model)} " \
               f"shows column {old_column} also as {new_column})"
        if strategy.kind == renames.VIEW:
            contract = [safe.FinishRenameViaView(model, old_column, new_column)]
            if new is None:
                return Rewrite([safe.RenameFieldViaView(model, op.old_name, op.new_name)], contract, [note])
            interim = self._variant(old, db_column=new.db_column)
            rest = self._rewrite_attributes(app_label, op, interim, new) if \
                self.deep_deconstruct(interim) != self.deep_deconstruct(new) else Rewrite([])
            return Rewrite([safe.RenameColumnViaView(model, op.name, interim), *rest.expand],
                           [*contract, *rest.contract], [note, *rest.notes])
        log = getattr(self.questioner, "log", None) or (lambda message: sys.stderr.write(message + "\n"))
        log(f"{app_label}.{model}.{old_name}: renamed through a copy (new column, dual-write trigger, batched "
            f"backfill), not a view: {strategy.reason}.")
        if old.null and old.has_db_default():
            # The new code's INSERT omits the old column, which then takes its
            # default; the trigger cannot tell that from the old code writing
            # it, so a NULL the new code writes on purpose would be replaced.
            target = new_name if new is None else f"column {new_column}"
            raise UnsafeChange(
                f"{model}.{old_name} -> {target}: the field is nullable and has a db_default, "
                f"and it must be renamed through a copy ({strategy.reason}). During the rollout the trigger that "
                f"keeps both columns in step cannot tell a NULL the new code "
                f"writes from a value the database default put into the old column, so such NULLs would be "
                f"lost. Safe sequence: first replace db_default with a Python default= (makemigrations --safe, "
                f"deploy, migrate_contract); then rename; then, if you want it, put db_default back — one "
                f"release per step.")
        if new is None:
            return Rewrite(
                [safe.RenameViaCopy(model, op.old_name, op.new_name, trigger_version=triggers.VERSION)],
                [safe.FinishRenameViaCopy(model, op.old_name, op.new_name)],
                [f"read and write {model}.{op.old_name}; a trigger copies it to {op.new_name} and back"],
            )
        return self._move_column_via_copy(app_label, op, old, new, old_column, new_column)

    def _move_column_via_copy(self, app_label, op, old, new, old_column, new_column):
        """A ``db_column`` change through a copy: the field keeps its name and moves to another column.

        First whatever else changes, on the old column, never tightening NOT
        NULL (the old code may write NULL there until contract); then the
        move, which builds the field's indexes and NOT NULL on the new column
        (``RenameViaCopy(field=)``); then a new NOT NULL, as for any field
        becoming NOT NULL.
        """
        loose = old.null or new.null
        stay = self._variant(new, db_column=old.db_column, null=loose)
        moved = self._variant(new, null=loose)
        parts = []
        if self.deep_deconstruct(stay) != self.deep_deconstruct(old):
            parts.append(self.rewrite_AlterField(
                app_label, migrations.AlterField(op.model_name, op.name, stay, preserve_default=op.preserve_default),
                old=old))
        parts.append(Rewrite(
            [safe.RenameViaCopy(op.model_name, op.name, op.name, trigger_version=triggers.VERSION, field=moved)],
            [safe.FinishRenameViaCopy(op.model_name, op.name, op.name, old_column=old_column)],
            [f"read and write column {old_column} of {op.model_name}; a trigger copies it to {new_column} and back"],
        ))
        if self.deep_deconstruct(moved) != self.deep_deconstruct(new):
            parts.append(self.rewrite_AlterField(
                app_label, migrations.AlterField(op.model_name, op.name, new, preserve_default=op.preserve_default),
                old=moved))
        return Rewrite([op for part in parts for op in part.expand], [op for part in parts for op in part.contract],
                       [note for part in parts for note in part.notes])

    def rewrite_RenameModel(self, app_label, op):
        old_table = self.model_table(self.from_state, app_label, op.old_name)
        new_table = self.model_table(self.to_state, app_label, op.new_name)
        if old_table == new_table:
            return Rewrite([op])
        joins = self._auto_m2m_tables(app_label, op.old_name)
        if joins:
            raise UnsafeChange(
                f"{op.old_name} -> {op.new_name}: the model takes part in auto-created many-to-many tables "
                f"({', '.join(joins)}) whose columns Django renames with the model, which breaks the running code. "
                f"Keep the table name instead: add db_table={old_table!r} to {op.new_name}'s Meta (the rename is "
                f"then state-only), or first give those relations explicit through models.")
        return Rewrite([safe.RenameModelWithView(op.old_name, op.new_name)],
                       [safe.DropCompatibilityView(old_table, new_table)],
                       [f"query table {old_table} (now an updatable view on {new_table})"])

    def rewrite_AlterField(self, app_label, op, old=None):
        """``old``: the field before ``op`` when an earlier step of the same change already altered it."""
        old = old or self.old_field(app_label, op.model_name, op.name)
        new = op.field
        if old is None:
            return Rewrite([op])
        self._refuse_relation_change(app_label, op, old, new)
        self._refuse_changed_db_default(op, old, new)
        kept = self._keep_database_on_delete(app_label, op, old, new)
        if kept is not None:
            return kept
        old_type, new_type = rules.column_types(old, new, self.from_state, self.to_state, app_label, op.model_name)
        if old_type is None or new_type is None:
            old_type = self.column_type(self.from_state, app_label, op.model_name, op.name, old)
            new_type = self.column_type(self.to_state, app_label, op.model_name, op.name, new)
        if not old.many_to_many and not new.many_to_many and _column(old, op.name) != _column(new, op.name):
            # A db_column change renames the column: the same choice as a field rename.
            return self._move_column(app_label, op, old, new, old_type, new_type)
        if old_type == new_type or self._follows_widened_key(app_label, op, old, new, old_type, new_type):
            return self._rewrite_attributes(app_label, op, old, new)
        if old.primary_key or new.primary_key:
            auto = {"AutoField", "BigAutoField"}
            if (old.primary_key and new.primary_key and (old_type, new_type) == ("integer", "bigint")
                    and (old.get_internal_type() in auto) == (new.get_internal_type() in auto)):
                self._refuse_exclusion_over_key(app_label, op)
                return Rewrite(
                    [safe.ChangePrimaryKeyToBigint(op.model_name, trigger_version=triggers.VERSION, field=new)],
                    [safe.FinishChangePrimaryKeyToBigint(op.model_name)],
                    [f"read and write {op.model_name} ids as integers; triggers copy the key and every "
                     f"foreign key to it into bigint shadow columns"],
                )
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: changing a primary key's type ({old_type} -> {new_type}) also "
                f"rewrites every foreign key column pointing at it, and only int -> bigint has a "
                f"zero-downtime strategy here. Manual steps: add a shadow column of the new type on the "
                f"table and on each referencing column, keep them in step with triggers, backfill, build a "
                f"unique index concurrently, then swap the primary key USING INDEX in one short "
                f"transaction and re-point the foreign keys NOT VALID + VALIDATE."
            )
        if old.many_to_many or new.many_to_many or old.is_relation != new.is_relation:
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: turning a field into or out of a relation cannot be done in "
                f"place. Add a new field next to it, write both from the new code, backfill, switch "
                f"reads, and remove the old field in a later deploy."
            )
        if in_place_type_change(old_type, new_type):
            # The type first (instant), keeping every other attribute; then
            # whatever else the edit changed, through the same rules as an
            # AlterField without a type change.
            interim = self._variant(new, null=old.null, unique=old.unique, db_index=old.db_index,
                                    default=old.default, db_default=old.db_default)
            rest = self._rewrite_attributes(app_label, op, interim, new)
            return Rewrite([safe.ChangeTypeViaCopy(op.model_name, op.name, interim), *rest.expand],
                           rest.contract, rest.notes)
        # Via a shadow column: it is built with the new field's NULL-ability,
        # indexes and unique constraint, so the swap brings all of them. When
        # the new type holds every old value the swap happens at expand (both
        # versions then share the new type); otherwise at contract.
        direction = rules.type_change_direction(old_type, new_type)
        if direction is None:
            raise UnsafeChange(self._no_common_type(op, old_type, new_type))
        self._refuse_exclusion_constraints(app_label, op, old_type, new_type)
        copy = safe.ChangeTypeViaCopy(op.model_name, op.name, new, trigger_version=triggers.VERSION)
        swap = safe.FinishChangeTypeViaCopy(op.model_name, op.name, new,
                                            stage="expand" if direction == "widen" else "contract")
        expand, contract = ([copy, swap], []) if direction == "widen" else ([copy], [swap])
        first, current = [], old
        if not old.null and new.null:
            # Until the swap both versions write the existing column, and the
            # new code may write NULL there: NOT NULL goes first (instant).
            current = self._variant(old, null=True)
            first.append(safe.DropNotNull(op.model_name, op.name, current))
        if direction != "widen" and new.has_db_default() and not old.has_db_default():
            # Until the swap at contract the new code's inserts, which send DEFAULT for the
            # field, land in the existing column: it gets the new db_default first (instant).
            first.append(migrations.AlterField(op.model_name, op.name,
                                               self._variant(current, db_default=new.db_default)))
        expand = [*first, *expand]
        if direction == "widen" and old.has_db_default() and not new.has_db_default():
            # The swap keeps the old column's database default for the old
            # code's inserts (FinishChangeTypeViaCopy); it goes at contract.
            contract.append(safe.DropColumnDefault(op.model_name, op.name))
        if old.null and not new.null:
            fill = self._fill_default(app_label, op, new, final=True)
            contract += [*fill, safe.SetNotNull(op.model_name, op.name, new, stage="contract")]
        note = (f"read {op.model_name}.{op.name} as {new_type} (the old code's values all fit it)"
                if direction == "widen" else f"write {op.model_name}.{op.name} with the old type {old_type}")
        return Rewrite(expand, contract, [note])

    def _refuse_exclusion_constraints(self, app_label, op, old_type, new_type):
        """A copy-based type change would drop the exclusion constraints over the column with it."""
        model = self.from_state.apps.get_model(app_label, op.model_name)
        names = mirror.exclusion_constraints(model, model._meta.get_field(op.name))
        if names:
            raise UnsafeChange(exclusion_refusal(op.model_name, op.name, old_type, new_type, names))

    def _refuse_exclusion_over_key(self, app_label, op):
        """A key swap would drop the exclusion constraints over the key or a foreign key to it."""
        model = self.from_state.apps.get_model(app_label, op.model_name)
        columns = [(model, model._meta.pk)]
        for other in self.from_state.apps.get_models(include_auto_created=True):
            columns += [(other, fk) for fk in other._meta.local_fields
                        if (fk.many_to_one or fk.one_to_one) and fk.remote_field.model is model]
        for owner, column in columns:
            names = mirror.exclusion_constraints(owner, column)
            if names:
                raise UnsafeChange(mirror.exclusion_refusal(
                    f"{op.model_name}'s key -> bigint", f"the key swap copies {owner._meta.model_name}."
                    f"{column.name} into a new bigint column", "change the key", names))

    def _move_column(self, app_label, op, old, new, old_type, new_type):
        """A field whose ``db_column`` changes: a column rename, through the one rename choice.

        Django renames the column in place, and the old code's next INSERT
        names a column that is gone. ``rename_column`` decides how (a view,
        else a copy), as for a field rename.
        """
        if old_type != new_type:
            # A copy's trigger, cached by every session it fired in, would meet
            # a column of another type after the type change's swap; a rename
            # window's view would show a column whose type changes under it.
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: the column moves ({_column(old, op.name)} -> {_column(new, op.name)}) "
                f"and changes type ({old_type} -> {new_type}) in one edit. The type change copies the column into "
                f"a shadow kept in step by triggers, and the move must keep the old name working during the same "
                f"rollout: they cannot share the column. Make them two releases: change db_column in one release "
                f"(makemigrations --safe, deploy, migrate_contract), then the type in the next.")
        return self.rename_column(app_label, op, old, op.name, new=new)

    def rewrite_AlterModelTable(self, app_label, op):
        """A ``Meta.db_table`` change: the table is renamed with a view left under the old name, as a model rename."""
        old_name = self.renamed_models.get((app_label, op.name_lower), op.name_lower)
        before = self.from_state.models[app_label, old_name]
        old_table = before.options.get("db_table") or self._default_table(app_label, op.name)
        new_table = self.model_table(self.to_state, app_label, op.name)
        if old_table == new_table:
            return Rewrite([op])
        joins = self._renamed_join_tables(app_label, op.name)
        tables = [(old_table, new_table), *joins]
        return Rewrite([safe.AlterModelTableWithView(op.name, op.table)],
                       [safe.DropCompatibilityView(old, new) for old, new in tables],
                       [f"query table {old} (now an updatable view on {new})" for old, new in tables])

    @staticmethod
    def _default_table(app_label, model_name):
        from django.db import connection
        from django.db.backends.utils import truncate_name

        return truncate_name(f"{app_label}_{model_name.lower()}", connection.ops.max_name_length())

    def _renamed_join_tables(self, app_label, model_name):
        """``[(old, new)]`` auto-created join tables whose names follow the model's table."""
        old_name = self.renamed_models.get((app_label, model_name.lower()), model_name.lower())
        old_model = self.from_state.apps.get_model(app_label, old_name)
        new_model = self.to_state.apps.get_model(app_label, model_name)
        old_fields = {f.name: f for f in old_model._meta.local_many_to_many}
        pairs = []
        for m2m in new_model._meta.local_many_to_many:
            old = old_fields.get(m2m.name)
            if old is not None and m2m.remote_field.through._meta.auto_created:
                pair = (old.m2m_db_table(), m2m.m2m_db_table())
                if pair[0] != pair[1]:
                    pairs.append(pair)
        return pairs

    def rewrite_AlterOrderWithRespectTo(self, app_label, op):
        """``order_with_respect_to`` set or unset: the ``_order`` column in two stages."""
        before = self.from_state.models.get((app_label, self.renamed_models.get(
            (app_label, op.name_lower), op.name_lower)))
        if before is None or op.name_lower in self._created_here:
            return Rewrite([op])  # a model created in this change: its table is new
        if bool(before.options.get("order_with_respect_to")) == bool(op.order_with_respect_to):
            return Rewrite([op])  # only the relation it follows changes: no SQL
        expand = [safe.AlterOrderWithRespectToSafely(op.name, op.order_with_respect_to)]
        if op.order_with_respect_to:
            return Rewrite(expand, [safe.DropColumnDefault(op.name, "_order")],
                           [f"insert into {op.name_lower} without _order: the database default (0) fills it"])
        return Rewrite(expand, [safe.DropColumn(op.name, "_order")],
                       [f"read and write {op.name_lower}._order; the new code leaves it NULL"])

    def rewrite_AlterUniqueTogether(self, app_label, op):
        """New ``unique_together`` pairs: their unique indexes are built concurrently."""
        before = self.from_state.models.get((app_label, self.renamed_models.get(
            (app_label, op.name_lower), op.name_lower)))
        olds = {tuple(names) for names in (before.options.get("unique_together") if before else None) or ()}
        if not {tuple(names) for names in op.option_value or ()} - olds:
            return Rewrite([op])  # only removals: one instant DROP CONSTRAINT each
        return Rewrite([safe.AlterUniqueTogetherConcurrently(op.name, op.option_value)])

    def _follows_widened_key(self, app_label, op, old, new, old_type, new_type):
        """A foreign key whose column becomes bigint only because the key it references does.

        ``ChangePrimaryKeyToBigint`` in the same change gives that column a
        shadow and swaps it in; the AlterField (Django writes one when
        something else about the field changed, null=True say) must not copy
        the column a second time.
        """
        if (old_type, new_type) != ("integer", "bigint") or not (old.many_to_one or old.one_to_one) \
                or not (new.many_to_one or new.one_to_one):
            return False
        old_target = rules._target(old, self.from_state, app_label, op.model_name)
        new_target = rules._target(new, self.to_state, app_label, op.model_name)
        if not (old_target and new_target) or \
                rules.table_of(self.from_state, *old_target) != rules.table_of(self.to_state, *new_target):
            return False
        pk = self.to_state.apps.get_model(*new_target)._meta.pk.name
        # A key other than the primary key is not the one being widened.
        return all(getattr(f, "to_fields", [None])[0] in (None, pk) for f in (old, new))

    def _refuse_changed_db_default(self, op, old, new):
        """A ``db_default`` that takes another value, while either version's inserts rely on it.

        The ORM sends ``DEFAULT`` for a field with a ``db_default`` and no
        Python default, so each version expects the column's default to be
        its own: the old code the old value, the new code the new one, in
        one column during the rollout. With a Python default on both sides
        the ORM sends the value itself and the column default does not matter.
        """
        if not (old.has_db_default() and new.has_db_default()) or (old.has_default() and new.has_default()):
            return
        if self.deep_deconstruct(old.db_default) == self.deep_deconstruct(new.db_default):
            return
        raise UnsafeChange(
            f"{op.model_name}.{op.name}: db_default changes value. The ORM inserts DEFAULT for this field, and "
            f"during the rollout the old code needs the old value and the new code the new one from the same "
            f"column. Safe sequence: first give the field a Python default equal to its current db_default "
            f"(default=...; no SQL), deploy it; then change db_default and default together "
            f"(makemigrations --safe, deploy, migrate_contract: each version now sends its own value); then, if "
            f"you want, drop the Python default — one release per step.")

    @staticmethod
    def _no_common_type(op, old_type, new_type):
        wider = rules.wider_type(old_type, new_type)
        if wider:
            return (f"{op.model_name}.{op.name}: {old_type} -> {new_type} cannot be done in one release. During the "
                    f"rollout old and new code share one column, and neither type holds every value the other "
                    f"version writes (values would be rounded, cut or refused). Safe sequence: change the field to "
                    f"{wider} first (makemigrations --safe, deploy, migrate_contract), then to {new_type} in a "
                    f"later release.")
        return (f"{op.model_name}.{op.name}: {old_type} -> {new_type} cannot be done in one release. During the "
                f"rollout old and new code share one column, and neither type holds every value the other version "
                f"writes. Safe sequence: add a new field of the new type (null=True) and write both fields from the "
                f"code; backfill it (Backfill or RunPythonBatched); switch reads to it; then remove the old field "
                f"and, if you want the old name, rename the new field — one makemigrations --safe release per step.")

    def _refuse_relation_change(self, app_label, op, old, new):
        """Changes of what a field points at, which no single release can make safe.

        The old code keeps writing the old kind of value into the same
        column (or join table) until it is gone: ids of the old target model,
        a plain value where a foreign key is expected, or the other way round.
        """
        steps = (f"Safe sequence: add a new field for the new relation (null=True) next to "
                 f"{op.model_name}.{op.name} and write both from the code; backfill it; switch reads to it; then "
                 f"remove {op.name} (and rename the new field if you want the old name) — one makemigrations "
                 f"--safe release per step.")
        if old.many_to_many or new.many_to_many:
            if old.many_to_many and new.many_to_many:
                def shape(state, field):
                    bound = state.apps.get_model(app_label, op.model_name)._meta.get_field(op.name)
                    through = bound.remote_field.through._meta
                    return (bound.m2m_db_table(), bound.related_model._meta.db_table,
                            [f.column for f in through.local_fields])
                if shape(self.from_state, old) == shape(self.to_state, new):
                    return
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: this changes a many-to-many relation's target or join table; Django "
                f"rebuilds or renames the join table in place, and the old code's queries on it break. {steps}")
        if old.is_relation != new.is_relation:
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: turning a field into or out of a relation renames its column "
                f"({rules.column_name(old, op.name)} -> {rules.column_name(new, op.name)}) and changes what the old "
                f"code writes there. {steps}")
        if old.is_relation and new.is_relation and old.remote_field and new.remote_field:
            old_target = rules._target(old, self.from_state, app_label, op.model_name)
            new_target = rules._target(new, self.to_state, app_label, op.model_name)
            old_table = rules.table_of(self.from_state, *old_target) if old_target else None
            new_table = rules.table_of(self.to_state, *new_target) if new_target else None
            if old_table and new_table and old_table != new_table:
                raise UnsafeChange(
                    f"{op.model_name}.{op.name}: the foreign key moves from {old_table} to {new_table}; the old "
                    f"code keeps writing ids of {old_table}, which the new constraint rejects. {steps}")

    @staticmethod
    def _refuse_removed_database_cascade(op, old):
        """A relation removed while its foreign key deletes rows in the database (``DB_CASCADE``).

        The old code deletes a parent with one DELETE and counts on the
        constraint to delete the children; the new code no longer has the
        field and does not expect its parent deletes to take them along. No
        constraint serves both during the rollout: dropped at expand, the old
        code's deletes leave the children behind; kept until contract, the
        new code's deletes remove rows plain Django's migration would keep.
        """
        if not (old.many_to_one or old.one_to_one) or not old.db_constraint or database_on_delete(old) != "CASCADE":
            return
        raise UnsafeChange(
            f"{op.model_name}.{op.name}: its foreign key deletes {op.model_name} rows in the database when the row "
            f"they point at is deleted (on_delete=DB_CASCADE). The old code deletes those rows counting on it; the "
            f"new code, without the field, does not expect it. Dropping the constraint at expand would leave the "
            f"old code's {op.model_name} rows behind; keeping it until contract would delete {op.model_name} rows "
            f"under the new code. Safe sequence: change on_delete to CASCADE in one release (makemigrations "
            f"--safe, deploy, migrate_contract: the ORM of either version then deletes the rows itself), then "
            f"remove the field in the next.")

    def _keep_database_on_delete(self, app_label, op, old, new):
        """A relation whose foreign key loses a database-level ``on_delete`` (``DB_CASCADE``, ...).

        The old code deletes a parent with one DELETE and counts on the
        constraint's ON DELETE for the children, so the constraint keeps it
        through the rollout and changes at contract (``ReplaceForeignKey``);
        Django's state takes the new field at expand. The new code acts in
        the ORM (CASCADE, SET_NULL, PROTECT, ...) before its DELETE, so the
        old action left in the constraint finds nothing more to do. The rest
        of the edit goes through the usual rules with the old ``on_delete``.
        Between two database-level actions no constraint serves both
        versions: refused, with the sequence through the Python-level one.
        """
        if old.many_to_many or new.many_to_many or not (old.is_relation and new.is_relation):
            return None
        action = database_on_delete(old) if old.db_constraint else None
        new_action = database_on_delete(new) if new.db_constraint else None
        if action is None or new_action == action:
            return None
        if new_action is not None:
            before, after = old.remote_field.on_delete, new.remote_field.on_delete
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: on_delete moves between two database-level actions ({before} -> "
                f"{after}). During the rollout the old code's deletes count on ON DELETE {action} and the new "
                f"code's on ON DELETE {new_action}; one constraint cannot do both, and either one does the wrong "
                f"thing to the other version's rows. Safe sequence: change on_delete to "
                f"{str(before).removeprefix('DB_')} in one release (makemigrations --safe, deploy, "
                f"migrate_contract: the ORM then acts itself), then to {after} in the next.")
        if database_on_delete(new) is not None:
            # Still a database-level action, but no constraint to carry it (db_constraint=False):
            # the new code's deletes leave the rows alone, the old code's count on the constraint.
            before = old.remote_field.on_delete
            raise UnsafeChange(
                f"{op.model_name}.{op.name}: db_constraint=False takes away the foreign key whose ON DELETE "
                f"{action} the old code's deletes count on, while the new code's on_delete "
                f"({new.remote_field.on_delete}) leaves the action to that same missing constraint. Kept until contract, the constraint would act "
                f"on the new code's deletes too; dropped at expand, the old code's would leave rows pointing at "
                f"nothing. Safe sequence: change on_delete to {str(before).removeprefix('DB_')} in one release "
                f"(makemigrations --safe, deploy, migrate_contract: the ORM then acts itself), then set "
                f"db_constraint=False in the next.")
        interim = self._variant(new, on_delete=old.remote_field.on_delete, db_constraint=True)
        if self.deep_deconstruct(interim) == self.deep_deconstruct(old):
            rest = Rewrite([])
        else:
            rest = self.rewrite_AlterField(app_label, migrations.AlterField(
                op.model_name, op.name, interim, preserve_default=op.preserve_default), old)
        state = migrations.SeparateDatabaseAndState(state_operations=[
            migrations.AlterField(op.model_name, op.name, new, preserve_default=op.preserve_default)])
        return Rewrite([*rest.expand, state],
                       [*rest.contract, safe.ReplaceForeignKey(op.model_name, op.name, field=old.clone())],
                       [*rest.notes, f"delete the rows {op.model_name}.{op.name} points at: the foreign key keeps "
                                     f"ON DELETE {action} until contract"])

    @staticmethod
    def _constant_default(field):
        return (field.has_default() and not callable(field.default) and not field.has_db_default()
                and field.get_default() is not None)

    def _fill_default(self, app_label, op, field, final=False):
        """Backfill operations giving NULL rows ``field``'s constant default, as plain Django does.

        The value travels as a query parameter (any ``%`` or quote in it is
        data, not SQL). The progress name carries a token unique to this
        generated migration, so the same change made again in a later
        release never finds this one's finished progress.
        """
        token = uuid.uuid4().hex[:8]
        suffix = "final-fill" if final else "fill"
        name = f"{app_label}.{op.model_name_lower}.{op.name}.{suffix}.{token}"
        column = _column(field, op.name)
        if field.has_db_default():
            # The column's own database default, evaluated per row, as plain
            # Django fills NULLs when a db_default comes with NOT NULL.
            return [safe.Backfill(op.model_name, set={op.name: "DEFAULT"}, where=f'"{column}" IS NULL',
                                  reverse_set={}, name=name, idempotent=True)]
        if field.has_default() and callable(field.default):
            fill = functools.partial(fill_with_field_default, app_label=app_label,
                                     model_name=op.model_name, field_name=op.name)
            return [safe.RunPythonBatched(op.model_name, fill, reverse_code=safe.RunPythonBatched.noop, name=name,
                                          idempotent=True)]
        if not field.has_default():
            # Plain Django fills NULLs with what its schema editor would give
            # the column (the current time, an empty string) before NOT NULL.
            implicit = _schema_default(self._variant(field, null=False))
            if implicit is None:
                return []
            kind, value = implicit
            if kind == "sql":
                return [safe.Backfill(op.model_name, set={op.name: value}, where=f'"{column}" IS NULL',
                                      reverse_set={}, name=name, idempotent=True)]
            return [safe.Backfill(op.model_name, set={op.name: "%s"}, params=[value], where=f'"{column}" IS NULL',
                                  reverse_set={}, name=name, idempotent=True)]
        # The raw value, not get_default(): a foreign key's get_default()
        # compares with its target model, unresolved in a migration state.
        default = field.default
        if isinstance(default, models.Model):
            default = default.pk
        if default is None:
            return []
        if _plain_parameter(field, default):
            return [safe.Backfill(op.model_name, set={op.name: "%s"}, params=[default],
                                  where=f'"{column}" IS NULL', reverse_set={}, name=name, idempotent=True)]
        # Only the field can render this value (JSON text, an array, an
        # hstore, a range, bytes on a column of another kind): the rows are
        # filled through the ORM, which adapts it as plain Django does.
        fill = functools.partial(fill_with_field_default, app_label=app_label,
                                 model_name=op.model_name, field_name=op.name)
        return [safe.RunPythonBatched(op.model_name, fill, reverse_code=safe.RunPythonBatched.noop, name=name,
                                      idempotent=True)]

    def _rewrite_attributes(self, app_label, op, old, new):
        """An AlterField whose column type stays: NULL-ability, indexes, defaults."""
        if old.null and not new.null:
            # Indexes first, then the rest of the field (defaults, a db_default
            # the fill relies on), then the fill of the existing NULLs.
            expand, current = [], old
            if (new.unique, new.db_index) != (old.unique, old.db_index):
                current = self._variant(old, unique=new.unique, db_index=new.db_index)
                expand.append(safe.AlterFieldIndexes(op.model_name, op.name, current))
            interim = self._variant(new, null=True)
            if self.deep_deconstruct(interim) != self.deep_deconstruct(current):
                alter = migrations.AlterField(op.model_name, op.name, interim)
                if not self.changes_database(app_label, op.model_name, current, interim, op.name):
                    # Only Python-side attributes (the default) differ: say so, and
                    # keep it re-runnable inside the non-atomic expand migration.
                    alter = migrations.SeparateDatabaseAndState(state_operations=[alter])
                expand.append(alter)
            expand += self._fill_default(app_label, op, new)
            final = new if op.preserve_default else self._variant(new, default=models.NOT_PROVIDED)
            # The old code may insert NULLs until it is gone: fill those too.
            contract = [*self._fill_default(app_label, op, new, final=True),
                        safe.SetNotNull(op.model_name, op.name, final, stage="contract")]
            return Rewrite(expand, contract, [f"insert NULL into {op.model_name}.{op.name}"])
        expand = []
        if not old.null and new.null:
            interim = self._variant(old, null=True)
            expand.append(safe.DropNotNull(op.model_name, op.name, interim))
            old = interim
        if (new.unique, new.db_index) != (old.unique, old.db_index):
            # Only the indexes here: the rest (a db_default, say) follows as an AlterField.
            interim = self._variant(old, unique=new.unique, db_index=new.db_index)
            expand.append(safe.AlterFieldIndexes(op.model_name, op.name, interim))
            old = interim
        if old.has_db_default() and not new.has_db_default():
            # Dropping a db_default at expand would make the old code's
            # inserts (which omit the column) fail: keep it until contract.
            keep = self._variant(new, db_default=old.db_default)
            if self.deep_deconstruct(keep) == self.deep_deconstruct(old) or not self.changes_database(
                    app_label, op.model_name, old, keep, op.name):
                return Rewrite([*expand, migrations.SeparateDatabaseAndState(state_operations=[
                                   migrations.AlterField(op.model_name, op.name, new)])],
                               [safe.DropColumnDefault(op.model_name, op.name)],
                               [f"insert into {op.model_name} without {op.name}: the database default fills it"])
            # The edit changes more than the default (PositiveIntegerField -> IntegerField drops a
            # CHECK): that part at expand, through the same rules, with the default kept; the state
            # becomes the new field, and the default goes at contract. (``old`` and ``keep`` agree on
            # NULL, indexes and default by now, so those rules give no contract steps of their own.)
            inner = self._rewrite_attributes(app_label, migrations.AlterField(op.model_name, op.name, keep), old, keep)
            return Rewrite([*expand, *inner.expand, migrations.SeparateDatabaseAndState(state_operations=[
                               migrations.AlterField(op.model_name, op.name, new)])],
                           [*inner.contract, safe.DropColumnDefault(op.model_name, op.name)],
                           [*inner.notes,
                            f"insert into {op.model_name} without {op.name}: the database default fills it"])
        if self.deep_deconstruct(old) != self.deep_deconstruct(new):
            if not expand:
                return Rewrite([op])
            alter = migrations.AlterField(op.model_name, op.name, new, preserve_default=op.preserve_default)
            if not self.changes_database(app_label, op.model_name, old, new, op.name):
                alter = migrations.SeparateDatabaseAndState(state_operations=[alter])
            expand.append(alter)
        return Rewrite(expand)

    @staticmethod
    def _variant(field, **attributes):
        """A copy of ``field`` built from its deconstruction with ``attributes`` changed."""
        name, path, args, kwargs = field.deconstruct()
        for key, value in attributes.items():
            if key in ("default", "db_default"):
                if value is models.NOT_PROVIDED:
                    kwargs.pop(key, None)
                else:
                    kwargs[key] = value
            elif key == "unique" and field.primary_key:
                continue
            else:
                kwargs[key] = value
        return field.__class__(*args, **kwargs)

    def rewrite_AddIndex(self, app_label, op):
        return Rewrite([safe.CreateIndexConcurrently(op.model_name, op.index)])

    def rewrite_RemoveIndex(self, app_label, op):
        return Rewrite([safe.DropIndexConcurrently(op.model_name, op.name)])

    def rewrite_AddConstraint(self, app_label, op):
        constraint = op.constraint
        if isinstance(constraint, models.UniqueConstraint):
            return Rewrite([safe.AddUniqueConstraint(op.model_name, constraint)])
        if isinstance(constraint, models.CheckConstraint):
            return Rewrite([safe.AddCheckConstraint(op.model_name, constraint)])
        if type(constraint).__name__ == "ExclusionConstraint":
            raise UnsafeChange(
                f"{op.model_name}: adding the exclusion constraint {constraint.name} to an existing table builds its "
                f"index under ACCESS EXCLUSIVE: every read and write of the table waits for the whole build. "
                f"PostgreSQL has no lock-friendly form (no CONCURRENTLY, and USING INDEX attaches only unique and "
                f"primary key constraints). Safe sequence: give a new model the constraint when it is created (its "
                f"table starts empty), write both models from the code, backfill the new one, switch reads to it "
                f"and remove the old model — one makemigrations --safe release per step. (A table small enough to "
                f"stay locked for the build can take it with plain makemigrations, in a release of its own.)")
        return Rewrite([op])


def risky_operations(changes, from_state):
    """Findings for the operations a plain makemigrations generated (for warnings)."""
    state = from_state.clone()
    findings = []
    for app_label, app_migrations in changes.items():
        for migration in app_migrations:
            created = set()
            for operation in migration.operations:
                if isinstance(operation, migrations.CreateModel):
                    created.add(operation.name_lower)
                model = getattr(operation, "model_name_lower", getattr(operation, "name_lower", None))
                finding = None if model in created else rules.classify(operation, state, app_label)
                if finding:
                    findings.append((f"{app_label}.{migration.name}", finding))
                try:
                    operation.state_forwards(app_label, state)
                except Exception:
                    pass
    return findings


__all__ = ["SafeMigrationAutodetector", "Rewrite", "UnsafeChange", "risky_operations", "operation_stage"]
