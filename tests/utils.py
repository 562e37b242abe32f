"""Helpers shared by the test modules: applying operations, commands, tables."""

import contextlib
import io
import sys
import textwrap
import uuid
from pathlib import Path

from django.apps.registry import Apps
from django.core.management import call_command
from django.db import connection, models
from django.db.migrations.migration import Migration
from django.db.migrations.state import ProjectState
from django.test.utils import override_settings


#: Advisory locks held in the current database only (a parallel test worker may hold its own).
ADVISORY_LOCKS_HERE = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def apply_operations(operations, state=None, app_label="shop", atomic=False, collect_sql=False):
    """Apply ``operations`` as one migration; returns (new_state, collected_sql)."""
    state = state or ProjectState()
    migration = Migration("test_migration", app_label)
    migration.operations = list(operations)
    migration.atomic = atomic
    with connection.schema_editor(atomic=atomic, collect_sql=collect_sql) as editor:
        new_state = migration.apply(state.clone(), editor, collect_sql=collect_sql)
    return new_state, getattr(editor, "collected_sql", [])


def unapply_operations(operations, state, app_label="shop", atomic=False):
    """Reverse ``operations`` (given the state *before* them); returns that state."""
    migration = Migration("test_migration", app_label)
    migration.operations = list(operations)
    migration.atomic = atomic
    with connection.schema_editor(atomic=atomic) as editor:
        return migration.unapply(state.clone(), editor)


def run_command(name, *args, **kwargs):
    """Call a management command; returns (stdout, stderr) text."""
    out, err = io.StringIO(), io.StringIO()
    kwargs.setdefault("verbosity", 1)
    call_command(name, *args, stdout=out, stderr=err, **kwargs)
    return out.getvalue(), err.getvalue()


def version_of_model(name, fields, db_table, app_label="shop"):
    """A model class in its own registry: one code version's view of a table.

    Two calls with different fields give the old and the new code's model for
    the same table, usable side by side in one process.
    """
    registry = Apps()
    meta = type("Meta", (), {"apps": registry, "db_table": db_table, "app_label": app_label})
    attrs = {"__module__": __name__, "Meta": meta}
    attrs.update(fields)
    return type(name, (models.Model,), attrs)


def execute(sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.description:
            return cursor.fetchall()
    return None


def fill_table(table, rows, **columns):
    """Insert ``rows`` rows with ``INSERT ... SELECT generate_series`` (fast).

    ``columns`` maps column names to SQL expressions of the series value
    ``i``, e.g. ``fill_table("t", 1000, v="i", name="'n' || i")``.
    """
    names = ", ".join(f'"{name}"' for name in columns)
    exprs = ", ".join(columns.values())
    execute(f'INSERT INTO "{table}" ({names}) SELECT {exprs} FROM generate_series(1, %s) AS g(i)', [rows])
    execute(f'ANALYZE "{table}"')


def unique_table(prefix="t"):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def temporary_migration_modules(tmp_path, apps_files):
    """Point apps' migrations at throw-away packages under ``tmp_path``.

    ``apps_files`` maps app labels to {file name: source}. Nothing is
    written into committed folders; yields {app_label: package directory}.
    """
    modules = {}
    roots = {}
    for app_label, files in apps_files.items():
        package = f"tmp_migrations_{app_label}_{uuid.uuid4().hex[:8]}"
        root = Path(tmp_path) / package
        root.mkdir(parents=True)
        (root / "__init__.py").write_text("")
        for filename, source in files.items():
            (root / filename).write_text(textwrap.dedent(source))
        modules[app_label] = package
        roots[app_label] = root
    sys.path.insert(0, str(tmp_path))
    try:
        with override_settings(MIGRATION_MODULES=modules):
            yield roots
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in modules.values())]:
            del sys.modules[module]


def forget_migrations(*app_labels):
    """Remove applied-migration records of throw-away migration modules."""
    execute("DELETE FROM django_migrations WHERE app = ANY(%s)", [list(app_labels)])
