"""Which mode a copy runs in, and handing a copy to the background.

An expand migration's copy runs inside ``migrate`` (inline) or is enqueued
for ``manage.py backfills run`` (background). The operations ask
``runs_in_background`` when they build their plans and mark the copy's
``Batched`` item accordingly; the runner (``pg.runner``) then calls
``enqueue_sql`` / ``enqueue_python`` instead of copying. The operation's
``background=`` argument decides; without it, ``BACKGROUND_MIN_ROWS``
against the table's estimated rows (``pg_class.reltuples``) decides, in an
expand migration only: a contract step, a rollback and everything that is
not a migration applied by ``migrate`` stay inline, because what runs after
them relies on the rows being filled. While Django builds a test database
everything is inline too: tests run against filled columns.
"""

import contextlib
import contextvars
import functools
import importlib
import json
from dataclasses import dataclass, field

from django.db.migrations.loader import MigrationLoader

from ..conf import conf
from ..exceptions import BackgroundMigrationError
from ..stages import Stage, creating_test_database
from . import background_state, catalog
from .ddl import current_migration


#: Row counts to decide by instead of the database's own: the table sizes of production while
#: ``rehearse`` deploys on a sample of it (``sized_as``).
_production_rows = contextvars.ContextVar("safemigrate_production_rows", default={})


@contextlib.contextmanager
def sized_as(rows_by_table):
    """Decide background or inline by ``{table: rows}`` (production's) rather than by the scratch copy.

    A 1 % sample of a 10M-row table holds 100k rows: below BACKGROUND_MIN_ROWS,
    so its copies ran inline in expand while production's would be enqueued,
    and the rehearsal described another deploy than the real one.
    """
    token = _production_rows.set(dict(rows_by_table))
    try:
        yield
    finally:
        _production_rows.reset(token)


def runs_in_background(connection, table, background):
    """True when the copy on ``table`` is to be enqueued rather than run now."""
    if creating_test_database():
        return False
    if background is not None:
        return bool(background)
    current = current_migration()
    if current is None or current[1] is not Stage.EXPAND or conf.background_min_rows is None:
        return False
    rows = max(catalog.estimated_rows(connection, table), _production_rows.get().get(table, 0), 0)
    return rows >= conf.background_min_rows


def _collecting(schema_editor):
    return getattr(schema_editor, "collect_sql", False)


def _label():
    current = current_migration()
    return current[0] if current else None


def enqueue_sql(schema_editor, *, name, table, set_sql, where_sql=None, params=None, key=None, columns=(),
                description="", idempotent=False):
    """Enqueue ``UPDATE table SET set_sql [WHERE where_sql]`` in batches; ``sqlmigrate`` shows it as a comment."""
    if _collecting(schema_editor):
        schema_editor.collected_sql.append(
            f"-- safemigrate: enqueued as background migration {name!r} (manage.py backfills run): "
            f"UPDATE {schema_editor.connection.ops.quote_name(table)} SET {set_sql}"
            + (f" WHERE {where_sql}" if where_sql else "") + " in keyset batches")
        return None
    spec = {"set_sql": set_sql, "where_sql": where_sql, "params": background_state.encode_params(params),
            "key": key, "idempotent": bool(idempotent)}
    return background_state.enqueue(schema_editor.connection, name=name, table=table, columns=columns, kind="sql",
                                    spec=spec, description=description, label=_label())


def callable_path(code):
    """``(dotted path, keywords)`` of a module-level function (or a ``functools.partial`` of one).

    The runner is another process: it imports the function by its path.
    """
    keywords = {}
    func = code
    if isinstance(code, functools.partial):
        if code.args:
            raise BackgroundMigrationError(
                f"Cannot run {code!r} in the background: a functools.partial with positional arguments "
                f"cannot be stored for the runner. Use keyword arguments, or background=False.")
        keywords, func = dict(code.keywords), code.func
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or "<" in qualname:
        raise BackgroundMigrationError(
            f"Cannot run {qualname or func!r} in the background: the runner imports the function by its "
            f"dotted path, and a lambda or a function defined inside another cannot be imported. Define it at "
            f"the top level of the migration file (as RunPython's examples do), or pass background=False.")
    try:
        json.dumps(keywords)
    except TypeError as exc:
        raise BackgroundMigrationError(
            f"Cannot run {module}.{qualname} in the background: its keyword arguments {keywords!r} are not "
            f"JSON values, so they cannot be stored for the runner ({exc}). Pass background=False.") from None
    return f"{module}:{qualname}", keywords


def import_callable(path, keywords):
    module, qualname = path.split(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return functools.partial(target, **keywords) if keywords else target


def migration_of(connection, app_label, operation):
    """``app_label.name`` of the migration holding ``operation`` (when not applied through ``migrate``)."""
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    for (label, name), migration in loader.disk_migrations.items():
        if label == app_label and any(op is operation for op in migration.operations):
            return f"{label}.{name}"
    for (label, name), migration in loader.disk_migrations.items():
        if label == app_label and any(getattr(op, "name", None) == operation.name and
                                      type(op) is type(operation) for op in migration.operations):
            return f"{label}.{name}"
    return None


@dataclass(frozen=True)
class PythonJob:
    """What the runner, another process, needs to run ``RunPythonBatched``'s code.

    The function by its dotted path (and its keyword arguments), the model
    it walks and the migration that holds it: the runner rebuilds the
    historical models from that migration, as ``RunPython`` hands them.
    """

    path: str
    keywords: dict = field(compare=False)
    model_name: str
    migration: str


def python_job(connection, operation, *, app_label, model_name, code, description):
    """The ``PythonJob`` for ``code``; refuses, with the reason, what the runner could not import.

    Built by the operation when it plans a background run (the engine never
    receives the operation: the migration's name is resolved here).
    """
    path, keywords = callable_path(code)
    label = _label() or migration_of(connection, app_label, operation)
    if label is None:
        raise BackgroundMigrationError(
            f"Cannot run {description} in the background: the migration that holds it was not found, and the "
            f"runner rebuilds the historical models from it. Apply it with manage.py migrate, or pass "
            f"background=False.")
    return PythonJob(path, keywords, model_name, label)


def enqueue_python(schema_editor, *, name, table, job, key, columns=(), description="", idempotent=False):
    """Enqueue ``job``'s ``code(apps, rows)`` over the table; ``apps`` are the models as of its migration."""
    if _collecting(schema_editor):
        schema_editor.collected_sql.append(
            f"-- safemigrate: enqueued as background migration {name!r} (manage.py backfills run): "
            f"{description} (Python, no SQL to show)")
        return None
    spec = {"callable": job.path, "keywords": job.keywords, "model_name": job.model_name, "key": key,
            "idempotent": bool(idempotent)}
    return background_state.enqueue(schema_editor.connection, name=name, table=table, columns=columns,
                                    kind="python", spec=spec, description=description, label=job.migration)
