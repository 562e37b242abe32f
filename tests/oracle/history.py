"""Applying a history the plain-Django way and the safemigrate way, and comparing.

Each side of the comparison is a scratch database plus a throw-away
migrations package for the ``oracleapp`` app. Per version, both sides run
the autodetector against the migration loader's state (as ``makemigrations``
does), write the files with Django's writer (``StagedMigrationWriter`` for
safemigrate), load them back and apply them in-process:

* plain Django: the old code writes, ``migrate``, the new code writes;
* safemigrate: ``migrate`` holding contract migrations back (``split_plan``),
  the old code then the new code write the same rows on the expanded
  schema, then the contract migrations.

After each version the catalogs and rows are compared (``catalog.diff``)
and ``makemigrations --check`` must find nothing on either side.
"""

import contextlib
import copy
import importlib
import os
import sys
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connections
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter
from django.db.utils import load_backend
from django.test.utils import override_settings

from safemigrate.autodetector import SafeMigrationAutodetector, UnsafeChange
from safemigrate.stages import split_plan
from safemigrate.writer import StagedMigrationWriter

from . import catalog
from .rows import Rows, write_rows
from .specs import APP, version_state


def app_only(state):
    """The oracle app's models of a loader state (the loader also knows every installed app)."""
    out = ProjectState()
    for (app_label, _), model in state.models.items():
        if app_label == APP:
            out.add_model(model.clone())
    return out


def questioner():
    """Answers renames "yes", the same way for both sides.

    Warnings makemigrations --safe would print go nowhere: the oracle judges
    results, and hundreds of histories would bury the report under them.
    """
    asker = MigrationQuestioner(specified_apps={APP}, defaults={"ask_rename": True, "ask_rename_model": True})
    asker.log = lambda message: None
    return asker


# -- scratch databases -----------------------------------------------------------


class ScratchDatabase:
    """A database on the test server, reachable as its own connection alias.

    The alias lives only while the database exists and never enters
    ``settings.DATABASES``: pytest-django's teardown walks the configured
    aliases and must not find this one.
    """

    def __init__(self, label):
        self.name = f"oracle_{label}_{uuid.uuid4().hex[:8]}"
        self.alias = self.name

    def __enter__(self):
        admin = connections["default"]
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {admin.ops.quote_name(self.name)}")
        self.settings_dict = copy.deepcopy(admin.settings_dict)
        self.settings_dict["NAME"] = self.name
        self._connect()
        return self

    def _connect(self):
        # Set as a connection object, not added to the settings: Django's test
        # cases refuse connections to configured aliases they were not told
        # about, and allow connections created on the fly.
        wrapper = load_backend(self.settings_dict["ENGINE"]).DatabaseWrapper(
            copy.deepcopy(self.settings_dict), self.alias)
        connections[self.alias] = wrapper

    @property
    def connection(self):
        return connections[self.alias]

    def reset(self):
        """An empty ``public`` schema: faster than a new database per history.

        A new connection object too: a history that failed half-way may have
        left the last one inside a broken transaction.
        """
        try:
            self.connection.close()
        except Exception:
            pass
        self._connect()
        connection = self.connection
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def __exit__(self, *exc_info):
        self.connection.close()
        del connections[self.alias]
        admin = connections["default"]
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {admin.ops.quote_name(self.name)} WITH (FORCE)")


# -- one side --------------------------------------------------------------------


class Side:
    def __init__(self, label, database, root, safe):
        self.label = label
        self.database = database
        self.safe = safe
        self.package = f"oracle_migrations_{label}_{uuid.uuid4().hex[:8]}"
        self.directory = Path(root) / self.package
        self.directory.mkdir(parents=True)
        (self.directory / "__init__.py").write_text("")
        self.files = {}

    @property
    def connection(self):
        return self.database.connection

    @contextlib.contextmanager
    def active(self):
        with override_settings(MIGRATION_MODULES={APP: self.package}):
            yield

    def makemigrations(self, version):
        """Write the migrations for ``version``; raises UnsafeChange when --safe refuses.

        The autodetector edits the states it is given, so each call builds its own.
        """
        to_state = version_state(version)
        with self.active():
            loader = MigrationLoader(None, ignore_no_migrations=True)
            detector = (SafeMigrationAutodetector if self.safe else MigrationAutodetector)(
                app_only(loader.project_state()), to_state, questioner())
            changes = detector.changes(graph=loader.graph, trim_to_apps={APP}, convert_apps={APP})
            writer = StagedMigrationWriter if self.safe else MigrationWriter
            written = []
            for migration in changes.get(APP, []):
                text = writer(migration).as_string()
                (self.directory / f"{migration.name}.py").write_text(text)
                self.files[migration.name] = text
                written.append(migration.name)
        importlib.invalidate_caches()
        return written

    def migrate(self, stage="all"):
        """Apply pending migrations: all of them, or the expand stage only."""
        with self.active():
            executor = MigrationExecutor(self.connection)
            targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == APP]
            plan = executor.migration_plan(targets)
            if stage == "expand":
                plan, _ = split_plan(plan, executor.loader.graph)
            if plan:
                executor.migrate(targets, plan=plan)
            return [migration.name for migration, _ in plan]

    def pending_changes(self, version):
        """What ``makemigrations --check`` would report (operation descriptions)."""
        to_state = version_state(version)
        with self.active():
            loader = MigrationLoader(None, ignore_no_migrations=True)
            changes = MigrationAutodetector(app_only(loader.project_state()), to_state, questioner()).changes(
                graph=loader.graph, trim_to_apps={APP}, convert_apps={APP})
        return [operation.describe() for migration in changes.get(APP, []) for operation in migration.operations]

    def execute(self, statements):
        """Run (sql, params) statements in autocommit; returns RETURNING values."""
        results = []
        with self.connection.cursor() as cursor:
            for sql, params in statements:
                cursor.execute(sql, params)
                results.append(cursor.fetchone()[0] if cursor.description else None)
        return results


# -- running a history ---------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "passed", "failed", "refused", "invalid"
    version: int = None
    messages: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    #: the sides cannot go on (a step raised)
    stop: bool = False

    def report(self):
        lines = [f"{self.status} at version {self.version + 1 if self.version is not None else '-'}"]
        lines += [f"  {message}" for message in self.messages]
        return "\n".join(lines)


def masked_columns(version):
    """Columns filled by a per-row random default: compared as NULL / not NULL only."""
    state = version_state(version)
    out = {}
    for spec in version:
        model = state.apps.get_model(APP, spec.name)
        for name, f in spec.fields:
            if f.default == "uuid4":
                out.setdefault(model._meta.db_table, []).append(model._meta.get_field(name).column)
    return out


def _error(exc):
    """One line for the report; ``ORACLE_TRACEBACK=1`` prints the whole traceback (debugging)."""
    if os.environ.get("ORACLE_TRACEBACK"):
        traceback.print_exception(exc)
    lines = traceback.format_exception_only(type(exc), exc)
    return " ".join(line.strip() for line in lines)[:600]


def run_history(history, root, plain_db, safe_db, hooks=None, ignore=(), keep_going=True):
    """Apply ``history`` both ways, comparing after each version; returns an Outcome.

    ``hooks`` maps a step name ("after_expand") to ``callable(index, plain, safe)``
    returning difference messages, for checks specific to one test.
    ``ignore`` drops difference messages containing any of these strings.
    With ``keep_going``, differences found after one version do not stop the
    history (later versions often show what an earlier slip leads to); an
    error in a step always does.
    """
    hooks = hooks or {}
    plain_db.reset()
    safe_db.reset()
    plain = Side("plain", plain_db, root, safe=False)
    safe = Side("safe", safe_db, root, safe=True)
    rows = Rows(history)
    sys.path.insert(0, str(root))
    found, first = [], None
    try:
        for index in range(len(history)):
            outcome = _release(index, history, rows, plain, safe, hooks)
            messages = [m for m in outcome.messages if not any(text in m for text in ignore)]
            if outcome.status == "passed" or (outcome.status == "failed" and not messages):
                continue
            if outcome.status != "failed":
                outcome.messages = found + messages
                outcome.files = dict(safe.files)
                if found:  # a difference before the step that could not run
                    outcome.status, outcome.version = "failed", first
                return outcome
            first = index if first is None else first
            found += [f"v{index + 1}: {message}" for message in messages]
            if not keep_going or outcome.stop:
                break
        if found:
            return Outcome("failed", first, found, dict(safe.files))
        return Outcome("passed", len(history) - 1, files=dict(safe.files))
    finally:
        sys.path.remove(str(root))
        for module in [name for name in sys.modules if name.startswith((plain.package, safe.package))]:
            del sys.modules[module]


def _release(index, history, rows, plain, safe, hooks):
    version = history[index]
    old = history[index - 1] if index else None
    try:
        plain.makemigrations(version)
    except Exception as exc:  # the history is not something Django can do: not a finding
        return Outcome("invalid", index, [f"plain makemigrations: {_error(exc)}"])
    try:
        safe.makemigrations(version)
    except UnsafeChange as exc:
        return Outcome("refused", index, [str(exc)])
    except Exception as exc:
        return Outcome("failed", index, [f"makemigrations --safe crashed: {_error(exc)}"], stop=True)
    # Plain Django: the old code writes, migrate, the new code writes.
    try:
        old_writes = write_rows(rows, old, plain, 2) if old else []
        plain.migrate()
        new_writes = write_rows(rows, version, plain, 2 if old else 4, updates=bool(old), deletes=bool(old))
    except Exception as exc:
        return Outcome("invalid", index, [f"plain Django: {_error(exc)}"])
    # safemigrate: expand; during the rollout the old and then the new code
    # write the same rows; contract.
    try:
        safe.migrate("expand")
    except Exception as exc:
        return Outcome("failed", index, [f"safemigrate expand: {_error(exc)}"], stop=True)
    messages = []
    if "after_expand" in hooks:
        messages += hooks["after_expand"](index, plain, safe)
    for who, statements in (("old", old_writes), ("new", new_writes)):
        try:
            safe.execute(statements)
        except Exception as exc:
            return Outcome("failed", index, [*messages, f"{who} code write after expand: {_error(exc)}"], stop=True)
    try:
        safe.migrate("all")
    except Exception as exc:
        return Outcome("failed", index, [*messages, f"safemigrate contract: {_error(exc)}"], stop=True)
    masked = masked_columns(version)
    messages += catalog.diff(catalog.snapshot(plain.connection, masked), catalog.snapshot(safe.connection, masked))
    pending = safe.pending_changes(version)
    if pending:
        messages.append("makemigrations --check after contract is not clean: " + "; ".join(pending))
    plain_pending = plain.pending_changes(version)
    if plain_pending and not messages:
        return Outcome("invalid", index, ["plain Django's own state is not clean: " + "; ".join(plain_pending)])
    return Outcome("failed" if messages else "passed", index, messages)
