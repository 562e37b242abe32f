"""SAFE141: a migration that constrains or drops a column a pending background migration fills.

``lint_migrations --unapplied`` reads the background migrations of the
database and, for each unapplied migration, the columns each operation drops
(``RemoveField``, the contract halves of a copy, a deleted model), renames or
constrains (NOT NULL, a unique or check constraint on it). Applying such a
migration before the copy is done loses the values not yet copied, or fails
half-way on the rows still NULL; the contract steps refuse it at run time
(``pg.background_gate``), the linter says so before the deploy.
"""

from django.db import migrations

from .. import operations as safe
from ..pg.schema import shadow_column
from . import rules
from .findings import Finding

CODE = "SAFE141"


def _field(state, app_label, model_name, name):
    try:
        return state.models[app_label, model_name.lower()].get_field(name)
    except (KeyError, LookupError):
        return None


def _column(state, app_label, model_name, name):
    field = _field(state, app_label, model_name, name)
    return rules.column_name(field, name) if field is not None else name


def touched(operation, state, app_label):
    """``(table, columns or None for the whole table, verb)`` of what ``operation`` drops or constrains."""
    model_name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
    table = rules.table_of(state, app_label, model_name) if model_name else None
    if table is None:
        return None
    column = lambda name: _column(state, app_label, model_name, name)  # noqa: E731
    if isinstance(operation, safe.FinishRenameViaCopy):
        return table, {column(operation.new_name), operation.old_name}, "drops the source of"
    if isinstance(operation, safe.FinishChangeTypeViaCopy):
        return table, {shadow_column(column(operation.name))}, "swaps in"
    if isinstance(operation, safe.FinishChangePrimaryKeyToBigint):
        pk = next((f for f in state.models[app_label, operation.name_lower].fields.values() if f.primary_key), None)
        return table, {shadow_column(getattr(pk, "db_column", None) or "id")}, "swaps in"
    if isinstance(operation, (migrations.DeleteModel, safe.DropTable)):
        return table, None, "drops the table of"
    if isinstance(operation, migrations.RemoveField):
        return table, {column(operation.name)}, "drops"
    if isinstance(operation, migrations.RenameField):
        return table, {column(operation.old_name)}, "renames"
    if isinstance(operation, migrations.AlterField):
        old = _field(state, app_label, model_name, operation.name)
        if old is not None and old.null and not operation.field.null:
            return table, {column(operation.name)}, "sets NOT NULL on"
        return None
    if isinstance(operation, migrations.AddConstraint):
        fields = getattr(operation.constraint, "fields", ()) or ()
        return (table, {column(name) for name in fields}, "adds a constraint on") if fields else None
    return None


def findings(operation, state, app_label, pending):
    """SAFE141 findings of ``operation`` against ``pending`` background migrations (rows of the state table)."""
    hit = touched(operation, state, app_label)
    if hit is None:
        return []
    table, columns, verb = hit
    out = []
    for row in pending:
        if row.table_name != table or (columns is not None and not set(row.columns) & columns):
            continue
        filled = ", ".join(row.columns) or "its columns"
        out.append(Finding(
            CODE, operation.describe(),
            f"it {verb} {table}.{filled}, which background migration {row.name!r} ({row.state}, "
            f"{row.progress_percent:.1f}% done) has not finished filling: applied now, it loses the values not "
            f"yet copied or fails half-way on the rows still empty.",
            f"finish the copy first (`python manage.py backfills finalize {row.name}`, or let `python manage.py "
            f"backfills run` finish it), then apply this migration.",
            table=table,
        ))
    return out
