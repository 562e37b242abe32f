"""Which migration operations hurt a live site, why, and what to use instead.

Shared by ``makemigrations`` (warnings, and the --safe rewrite), the
``lint_migrations`` command and the ``--plan`` output of the migrate
commands. Two ways an operation hurts: it breaks the code that is still
running during the deploy (old code selects a dropped column, inserts
without a new NOT NULL column), or it holds / queues for a table lock long
enough to stall traffic (rewrites, blocking index builds, full-table scans).
"""

from dataclasses import dataclass

from django.db import migrations, models

ACCESS_EXCLUSIVE_INSTANT = "ACCESS EXCLUSIVE (instant catalog change; queues traffic if it waits)"
SHARE_BUILD = "SHARE for the whole index build (blocks writes)"


@dataclass(frozen=True)
class Finding:
    code: str
    operation: str
    problem: str
    fix: str

    def __str__(self):
        return f"[{self.code}] {self.operation}: {self.problem} Safe alternative: {self.fix}"


def _field(from_state, app_label, model_name, name):
    if from_state is None or app_label is None:
        return None
    try:
        return from_state.models[app_label, model_name.lower()].get_field(name)
    except (KeyError, LookupError):
        return None


def type_changed(old, new, connection=None):
    """True when the column type changes in a way PostgreSQL must rewrite or scan for."""
    from django.db import connection as default

    from .operations.copy import in_place_type_change

    connection = connection or default
    try:
        old_type, new_type = old.db_parameters(connection)["type"], new.db_parameters(connection)["type"]
    except ValueError:  # an unresolved relation: its type follows its target, not this change
        return False
    return old_type != new_type and not in_place_type_change(old_type, new_type)


def lock_for(operation, from_state=None, app_label=None):
    """The strongest table lock ``operation`` takes, and for how long."""
    level = getattr(operation, "lock_level", None)
    if level:
        return level
    if isinstance(operation, (migrations.CreateModel,)):
        return "none on existing tables"
    if isinstance(operation, (migrations.RunPython,)):
        return "whatever the code does, in one transaction"
    if isinstance(operation, migrations.RunSQL):
        return "unknown (raw SQL)"
    if isinstance(operation, migrations.AddIndex):
        return SHARE_BUILD
    if isinstance(operation, migrations.AddConstraint):
        if isinstance(operation.constraint, models.UniqueConstraint):
            return SHARE_BUILD
        return "ACCESS EXCLUSIVE for a full-table validation scan"
    if isinstance(operation, migrations.AddField):
        field = operation.field
        if field.unique or field.db_index:
            return "ACCESS EXCLUSIVE, then " + SHARE_BUILD
        if field.is_relation:
            return "SHARE ROW EXCLUSIVE on both tables for a full validation scan"
        return ACCESS_EXCLUSIVE_INSTANT
    if isinstance(operation, migrations.AlterField):
        old = _field(from_state, app_label, operation.model_name, operation.name)
        if old is not None and type_changed(old, operation.field):
            return "ACCESS EXCLUSIVE for a full table rewrite (blocks reads and writes)"
        if old is not None and old.null and not operation.field.null:
            return "ACCESS EXCLUSIVE for a full-table NOT NULL scan"
        return ACCESS_EXCLUSIVE_INSTANT
    if isinstance(operation, (migrations.AlterUniqueTogether, getattr(migrations, "AlterIndexTogether", ()))):
        return SHARE_BUILD
    if isinstance(operation, (migrations.AlterModelOptions, migrations.AlterModelManagers)):
        return "none (state only)"
    return ACCESS_EXCLUSIVE_INSTANT


def classify(operation, from_state=None, app_label=None):
    """A ``Finding`` when ``operation`` is risky on a live site, else None."""
    name = operation.__class__.__name__
    desc = operation.describe()
    if getattr(operation, "lock_level", None):
        return None  # safemigrate's own operations are the safe alternatives
    if isinstance(operation, migrations.RemoveField):
        return Finding("SM001", desc,
                       "drops the column while old code still selects and inserts it: every query of the "
                       "old code on this model fails until the rollout ends.",
                       "RemoveFieldSafely (expand) now, DropColumn (contract) after the deploy.")
    if isinstance(operation, migrations.DeleteModel):
        return Finding("SM002", desc, "drops the table while old code still queries it.",
                       "RemoveModelSafely (expand), DropTable (contract).")
    if isinstance(operation, migrations.RenameField):
        return Finding("SM003", desc, "renames the column under the running old code, which keeps using the old name.",
                       "RenameViaCopy (new column + dual-write triggers + backfill), FinishRenameViaCopy (contract).")
    if isinstance(operation, migrations.RenameModel):
        return Finding("SM004", desc, "renames the table under the running old code.",
                       "RenameModelWithView (rename + updatable view under the old name), DropCompatibilityView "
                       "(contract); or keep the old name with Meta.db_table.")
    if isinstance(operation, migrations.AddField):
        field = operation.field
        if not field.null and not field.has_db_default():
            if field.has_default() and callable(field.default):
                return Finding("SM005", desc,
                               f"the callable default {field.default!r} is evaluated once and written to every row "
                               "under ACCESS EXCLUSIVE, and old code's INSERTs then fail the NOT NULL.",
                               "AddColumnNullable + Backfill (one value per row) now, SetNotNull (contract).")
            return Finding("SM006", desc,
                           "Django drops the database default right after adding the column, so old code's "
                           "INSERTs (which omit it) fail the NOT NULL until the rollout ends.",
                           "AddColumnNullable keeps a constant DB default; DropColumnDefault (contract).")
        if field.unique or field.db_index:
            return Finding("SM007", desc, "builds the index while holding a lock that blocks writes.",
                           "AddColumnNullable, which builds the index CONCURRENTLY.")
        if field.is_relation and getattr(field, "db_constraint", True):
            return Finding("SM008", desc, "validates the foreign key over the whole table under SHARE ROW "
                           "EXCLUSIVE on both tables and builds its index blocking writes.",
                           "AddForeignKey (NOT VALID, VALIDATE separately, index CONCURRENTLY).")
        return None
    if isinstance(operation, migrations.AlterField):
        old = _field(from_state, app_label, operation.model_name, operation.name)
        new = operation.field
        if old is None:
            return None
        if type_changed(old, new):
            return Finding("SM009", desc, "changes the column type, which usually rewrites the table and its "
                           "indexes under ACCESS EXCLUSIVE.",
                           "ChangeTypeViaCopy (in place when PostgreSQL needs no rewrite, otherwise a shadow "
                           "column kept in step by triggers), FinishChangeTypeViaCopy (contract).")
        if old.null and not new.null:
            return Finding("SM010", desc, "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE, and old "
                           "code may still insert NULLs.",
                           "Backfill the NULLs, then SetNotNull (validated CHECK, contract).")
        if (new.unique and not old.unique) or (new.db_index and not old.db_index):
            return Finding("SM011", desc, "builds an index while blocking writes.",
                           "AlterFieldIndexes (index CONCURRENTLY, unique via USING INDEX).")
        return None
    if isinstance(operation, migrations.AddIndex):
        return Finding("SM012", desc, "CREATE INDEX blocks every write for the whole build.",
                       "CreateIndexConcurrently in a non-atomic migration.")
    if isinstance(operation, migrations.RemoveIndex):
        return Finding("SM013", desc, "DROP INDEX takes ACCESS EXCLUSIVE and queues all traffic if it waits.",
                       "DropIndexConcurrently.")
    if isinstance(operation, migrations.AddConstraint):
        if isinstance(operation.constraint, models.UniqueConstraint):
            return Finding("SM014", desc, "builds the unique index while blocking writes.",
                           "AddUniqueConstraint (index CONCURRENTLY, then USING INDEX).")
        return Finding("SM015", desc, "validates every row while holding ACCESS EXCLUSIVE.",
                       "AddCheckConstraint (NOT VALID, then VALIDATE).")
    if isinstance(operation, migrations.AlterUniqueTogether) and operation.option_value:
        return Finding("SM016", desc, "builds unique indexes while blocking writes.",
                       "Meta.constraints with UniqueConstraint and AddUniqueConstraint.")
    if isinstance(operation, migrations.RunPython):
        return Finding("SM017", f"{name}: {desc}", "runs in one transaction: on a big table it holds row locks "
                       "until the end and cannot resume after a kill.",
                       "RunPythonBatched (short keyset batches, resumable).")
    return None
