"""Which strategy renames a column: a view (no rows copied) or a copy kept in step by a trigger.

``makemigrations --safe`` asks ``choose`` once per renamed column (a
``RenameField``, or a ``db_column`` change) and writes the answer into the
migration file, so the file says which strategy runs. The view is chosen
whenever it can serve; the copy stays for the rest, with the reason
printed:

- ``SAFEMIGRATE["RENAME_STRATEGY"] = "copy"`` asks for the copy everywhere;
- the same release renames the model's table (the window's view would have
  to move with it);
- the same release changes the type of the renamed field (a view pins the
  column's type; the copy builds the new type anyway);
- a pgtrigger trigger of the model names the column in its function body
  (a view keeps the old name for queries, not inside trigger code);
- the database ``makemigrations`` can reach says so (``windows.why_not``:
  partitioned, inherited, views or rules on the table, row-level security
  without ``security_invoker``).

The operation checks the database again at ``migrate`` (it may differ from
the one ``makemigrations`` saw) and falls back or refuses loudly there.
"""

import re
from dataclasses import dataclass

from django.db import DEFAULT_DB_ALIAS, connections, migrations

from .. import operations as safe
from ..conf import conf
from ..pg import catalog, views, windows
from . import rules
from .findings import Finding

VIEW = "view"
COPY = "copy"


@dataclass(frozen=True)
class RenameStrategy:
    kind: str
    #: Why the copy was chosen (None for the view).
    reason: "str | None" = None


def _same_model(op, model_name):
    name = getattr(op, "model_name_lower", None) or getattr(op, "name_lower", None)
    return name == model_name.lower() or getattr(op, "old_name_lower", None) == model_name.lower()


def _renames_table(op, model_name, app_label, from_state):
    if isinstance(op, migrations.RenameModel) and op.old_name_lower == model_name.lower():
        return True
    if isinstance(op, migrations.AlterModelTable) and op.name_lower == model_name.lower():
        return rules.table_of(from_state, app_label, model_name) != (op.table or f"{app_label}_{op.name_lower}")
    return False


def _trigger_names_column(model_state, column):
    word = re.compile(rf"(?<![\w$]){re.escape(column)}(?![\w$])", re.I)
    for trigger in (model_state.options.get("triggers") or []) if model_state else []:
        if word.search(str(getattr(trigger, "func", "") or "")):
            return getattr(trigger, "name", "a trigger")
    return None


def _database_reason(table, column):
    """What the database ``makemigrations`` can reach says (None when it cannot be asked)."""
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql":
            return None
        reason = windows.why_not(connection, table, column)
    except Exception:  # no database here, or not allowed (CI without one): migrate decides
        return None
    return f"{reason} (on database {connection.settings_dict.get('NAME')!r})" if reason else None


def choose(app_label, model_name, old_column, new_name, from_state, to_state, release_operations,
           ask_database=True):
    """The ``RenameStrategy`` for renaming ``model_name``'s column ``old_column``.

    ``new_name`` is the field's name after the change; ``release_operations``
    are the operations Django generated for the app in this release.
    """
    if conf.rename_strategy == COPY:
        return RenameStrategy(COPY, "SAFEMIGRATE['RENAME_STRATEGY'] is 'copy'")
    for op in release_operations:
        if _renames_table(op, model_name, app_label, from_state):
            return RenameStrategy(COPY, "the same release renames the model's table")
        if isinstance(op, migrations.AlterField) and _same_model(op, model_name) and \
                op.name_lower == new_name.lower():
            old = rules._field(from_state, app_label, model_name, _old_field_name(from_state, app_label,
                                                                                   model_name, old_column))
            if old is not None:
                old_type, new_type = rules.column_types(old, op.field, from_state, to_state, app_label, model_name)
                if old_type and new_type and old_type != new_type:
                    return RenameStrategy(COPY, f"the same release also changes its type ({old_type} -> "
                                                f"{new_type})")
    trigger = _trigger_names_column(from_state.models.get((app_label, model_name.lower())), old_column)
    if trigger:
        return RenameStrategy(COPY, f"the model's trigger {trigger} names column {old_column} in its function")
    if ask_database:
        table = rules.table_of(from_state, app_label, model_name)
        reason = _database_reason(table, old_column) if table else None
        if reason:
            return RenameStrategy(COPY, reason)
    return RenameStrategy(VIEW)


def _old_field_name(state, app_label, model_name, column):
    model = state.models.get((app_label, model_name.lower()))
    for name, field in (model.fields.items() if model else []):
        if rules.column_name(field, name) == column:
            return name
    return column


# -- how planning output shows a window (plan JSON, lint_migrations) ------------------------


def window_of(operation, state, app_label):
    """``{"action", "table", "old_column", "new_column"}`` for an operation that opens or closes a window.

    ``state`` is the project state before the operation. None for any
    other operation.
    """
    if isinstance(operation, safe.FinishRenameViaView):
        return {"action": "close", "table": rules.table_of(state, app_label, operation.model_name),
                "old_column": operation.old_column, "new_column": operation.new_column}
    if isinstance(operation, safe.RenameFieldViaView):
        old = rules._field(state, app_label, operation.model_name, operation.old_name)
        if old is None:
            return None
        return {"action": "open", "table": rules.table_of(state, app_label, operation.model_name),
                "old_column": rules.column_name(old, operation.old_name),
                "new_column": rules.column_name(old, operation.new_name)}
    if isinstance(operation, safe.RenameColumnViaView):
        old = rules._field(state, app_label, operation.model_name, operation.name)
        if old is None:
            return None
        return {"action": "open", "table": rules.table_of(state, app_label, operation.model_name),
                "old_column": rules.column_name(old, operation.name),
                "new_column": rules.column_name(operation.field, operation.name)}
    return None


def open_windows(connection):
    """The windows open in the database, for the plan JSON (empty when it cannot be asked)."""
    try:
        found = catalog.rename_windows(connection)
    except Exception:
        return []
    return [{"table": w.view, "base": w.base, "old_names": {alias: column for alias, column in w.aliases}}
            for _, w in sorted(found.items())]


def window_findings(operation, state, app_label, windows_open):
    """``SAFE142`` notes for ``lint_migrations``, and ``windows_open`` kept up to date.

    ``windows_open`` maps a table to the number of old names its view
    shows, as the migrations seen so far leave it. Call for every operation
    in migration order (before its ``state_forwards``).
    """
    found = []
    window = window_of(operation, state, app_label)
    if window and window["action"] == "open":
        table = window["table"]
        windows_open[table] = windows_open.get(table, 0) + 1
        found.append(Finding(
            "SAFE142", operation.describe(),
            f"opens a rename window on {table}: until its contract (FinishRenameViaView) {table} is a view over "
            f"{views.base_name(table)} that shows {window['old_column']} also as {window['new_column']}. Both code "
            f"versions work; outside migrations, TRUNCATE and COPY ... FROM on {table} fail (use {views.base_name(table)}), "
            f"and psql's \\d, pg_dump and ORMs' introspection show a view.",
            "nothing to change: run migrate_contract once no old code runs (docs: renames).",
            rules.lock_for(operation, state, app_label), table))
    elif window and window["action"] == "close" and windows_open.get(window["table"]):
        windows_open[window["table"]] -= 1
        if not windows_open[window["table"]]:
            del windows_open[window["table"]]
    elif isinstance(operation, migrations.RunSQL) and windows_open:
        text = " ".join(str(part) for part in ([operation.sql] if isinstance(operation.sql, str) else operation.sql))
        for table in sorted(windows_open):
            if table.lower() in text.lower():
                found.append(Finding(
                    "SAFE142", f"RunSQL: {operation.describe()}",
                    f"runs while {table} is a rename window's view: during migrate safemigrate points its DDL at "
                    f"{views.base_name(table)} (re-creating the view where columns change); renaming or dropping "
                    f"{table} is refused until the rename's contract.",
                    "apply the pending contract first if this SQL renames, moves or drops the table.",
                    "as the SQL says", table))
    return found
