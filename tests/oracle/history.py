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

from django.db import connections, models, transaction
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter
from django.db.utils import load_backend
from django.test.utils import override_settings
from django.utils import timezone

from safemigrate.pg.execution import BoundedExecutorMixin
from safemigrate.planning.autodetector import SafeMigrationAutodetector, UnsafeChange
from safemigrate.planning.writer import StagedMigrationWriter
from safemigrate.stages import Stage, migration_stage, split_plan

from . import catalog
from .rows import Rows, cross_updates, write_rows
from .specs import APP, build_models, check_errors, version_state


def app_only(state):
    """The oracle app's models of a loader state (the loader also knows every installed app)."""
    out = ProjectState()
    for (app_label, _), model in state.models.items():
        if app_label == APP:
            out.add_model(model.clone())
    return out


class OracleQuestioner(MigrationQuestioner):
    """A developer at ``makemigrations``' prompts: yes to renames, the suggested one-off defaults."""

    def ask_auto_now_add_addition(self, field_name, model_name):
        return timezone.now  # the interactive default answer for an auto_now_add field

    def ask_not_null_addition(self, field_name, model_name):
        return models.NOT_PROVIDED  # the grammar gives NOT NULL fields defaults

    def ask_not_null_alteration(self, field_name, model_name):
        return models.NOT_PROVIDED


def questioner():
    """Answers renames "yes", the same way for both sides.

    Warnings makemigrations --safe would print go nowhere: the oracle judges
    results, and hundreds of histories would bury the report under them.
    """
    asker = OracleQuestioner(specified_apps={APP}, defaults={"ask_rename": True, "ask_rename_model": True})
    asker.log = lambda message: None
    return asker


# -- scratch databases -----------------------------------------------------------

#: HStoreField needs hstore; an ExclusionConstraint with ``=`` on a plain column needs btree_gist.
EXTENSIONS = ("hstore", "btree_gist")
EXTENSIONS_SCHEMA = "oracle_ext"


class ScratchDatabase:
    """A database on the test server, reachable as its own connection alias.

    The alias lives only while the database exists and never enters
    ``settings.DATABASES``: pytest-django's teardown walks the configured
    aliases and must not find this one.

    ``profile`` (a ``testproject.profiles`` name) sets the database up as that
    profile says: with ``two_role_app_schema`` the migrations run as the owner
    role in the schema ``app``, the code versions' writes go through the app role
    (``traffic_connection``), and ``public`` holds decoy tables named like the
    application's.
    """

    def __init__(self, label, profile=None):
        self.name = f"oracle_{label}_{uuid.uuid4().hex[:8]}"
        self.alias = self.name
        self.profile = profile

    def __enter__(self):
        admin = connections["default"]
        self.settings_dict = copy.deepcopy(admin.settings_dict)
        self.settings_dict["NAME"] = self.name
        self.traffic_settings = None
        roles = ()
        if self.profile:
            from testproject.profiles import APP_ROLE, OWNER, ProfileDatabase

            self.profiled = ProfileDatabase(self.profile, name=self.name).create()
            self._decoys()
            for key in ("USER", "PASSWORD"):
                self.settings_dict[key] = self.profiled.settings("owner")[key]
            if self.profiled.profile.two_roles:
                self.traffic_settings = {**self.settings_dict,
                                         **{key: self.profiled.settings("app")[key] for key in ("USER", "PASSWORD")}}
                roles = (OWNER, APP_ROLE)
        else:
            with admin.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {admin.ops.quote_name(self.name)}")
        self._install_extensions(admin, roles)
        self._connect()
        return self

    def _install_extensions(self, admin, roles):
        """The extensions the grammar's fields need, in a schema of their own, on every role's path.

        Created as the administrator (the profile's roles may not create schemas in a
        database they do not own) before Django first connects: django.contrib.postgres
        looks the hstore type up once per alias. reset() keeps the schema (it empties
        ``public``, or the profile's schema). A role's own ``search_path`` (the grants
        page sets ``app, public`` on both roles) overrides the database's, so each role
        gets its path again in this database, with the extensions' schema added after it.
        """
        quote = admin.ops.quote_name
        settings_dict = copy.deepcopy(admin.settings_dict)
        settings_dict["NAME"] = self.name
        wrapper = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, f"{self.alias}_setup")
        # A raw connection: Django's would announce itself (connection_created) under an unknown alias.
        raw = wrapper.get_new_connection(wrapper.get_connection_params())
        try:
            raw.autocommit = True
            raw.execute(f"CREATE SCHEMA {EXTENSIONS_SCHEMA}")
            raw.execute(f"GRANT USAGE ON SCHEMA {EXTENSIONS_SCHEMA} TO PUBLIC")
            for extension in EXTENSIONS:
                raw.execute(f"CREATE EXTENSION {extension} SCHEMA {EXTENSIONS_SCHEMA}")
            schema = self.profiled.profile.schema if self.profile else None
            path = ", ".join(quote(name) for name in (schema, "public", EXTENSIONS_SCHEMA) if name)
            raw.execute(f"ALTER DATABASE {quote(self.name)} SET search_path = {path}")
            for role in roles:
                raw.execute(f"ALTER ROLE {quote(role)} IN DATABASE {quote(self.name)} SET search_path = {path}")
        finally:
            raw.close()

    def _decoys(self):
        from .strategies import MODEL_NAMES

        for name in MODEL_NAMES:
            self.profiled.add_decoy_table(f"{APP}_{name.lower()}")

    def _connect(self):
        # Set as a connection object, not added to the settings: Django's test cases refuse
        # connections to configured aliases they were not told about, and allow connections
        # created on the fly.
        for alias, settings_dict in ((self.alias, self.settings_dict), (f"{self.alias}_app", self.traffic_settings)):
            if settings_dict is not None:
                connections[alias] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(
                    copy.deepcopy(settings_dict), alias)

    @property
    def connection(self):
        return connections[self.alias]

    @property
    def traffic_connection(self):
        """The connection the code versions' writes go through (the app role under two roles)."""
        return connections[f"{self.alias}_app"] if self.traffic_settings else self.connection

    def _close(self):
        for alias in (self.alias, f"{self.alias}_app"):
            try:
                connections[alias].close()
            except Exception:
                pass

    def reset(self):
        """An empty ``public`` schema: faster than a new database per history.

        A new connection object too: a history that failed half-way may have
        left the last one inside a broken transaction.
        """
        self._close()
        if self.profile:
            self.profiled.reset()
            self._connect()
            return
        self._connect()
        connection = self.connection
        with connection.cursor() as cursor:
            cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

    def __exit__(self, *exc_info):
        self._close()
        del connections[self.alias]
        if self.traffic_settings:
            del connections[f"{self.alias}_app"]
        if self.profile:
            self.profiled.drop()
            return
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

    def unapplied(self):
        """Names of the migrations on disk not applied yet."""
        with self.active():
            executor = MigrationExecutor(self.connection)
            targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == APP]
            return {m.name for m, _ in executor.migration_plan(targets)}

    def migrate(self, stage="all", only=None):
        """Apply pending migrations: all of them, or the expand stage only (``only``: just these names).

        safemigrate's side runs them as ``migrate`` does, through the
        execution path that sees every statement (lock bounds, rename windows).
        """
        with self.active():
            executor = (SafeExecutor if self.safe else MigrationExecutor)(self.connection)
            targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == APP]
            plan = executor.migration_plan(targets)
            if stage == "expand":
                plan, _ = split_plan(plan, executor.loader.graph)
            if only is not None:
                plan = [(m, backwards) for m, backwards in plan if m.name in only]
            if plan:
                executor.migrate(targets, plan=plan)
            return [migration.name for migration, _ in plan]

    def held_expand(self):
        """Expand migrations ``migrate`` holds back behind a pending contract."""
        with self.active():
            executor = MigrationExecutor(self.connection)
            targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == APP]
            _, held = split_plan(executor.migration_plan(targets), executor.loader.graph)
            return [m.name for m, _ in held if migration_stage(m) is Stage.EXPAND]

    def pending_changes(self, version):
        """What ``makemigrations --check`` would report (operation descriptions)."""
        to_state = version_state(version)
        with self.active():
            loader = MigrationLoader(None, ignore_no_migrations=True)
            changes = MigrationAutodetector(app_only(loader.project_state()), to_state, questioner()).changes(
                graph=loader.graph, trim_to_apps={APP}, convert_apps={APP})
        return [operation.describe() for migration in changes.get(APP, []) for operation in migration.operations]

    def execute(self, statements):
        """Run (sql, params) statements in autocommit, as the code does; returns RETURNING values."""
        results = []
        with self.database.traffic_connection.cursor() as cursor:
            for sql, params in statements:
                cursor.execute(sql, params)
                results.append(cursor.fetchone()[0] if cursor.description else None)
        return results

    def replay(self, actions):
        """Run the statements ORM calls sent on the other side, each call in a transaction of its own."""
        for statements in actions:
            with transaction.atomic(using=self.connection.alias), self.connection.cursor() as cursor:
                for sql, params, many in statements:
                    if many:
                        cursor.executemany(sql, params)
                    else:
                        cursor.execute(sql, params)


class SafeExecutor(BoundedExecutorMixin, MigrationExecutor):
    """The executor ``migrate`` uses."""


# -- running a history ---------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "passed", "failed", "refused", "invalid"
    version: int = None
    messages: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    #: the sides cannot go on (a step raised)
    stop: bool = False
    #: differences kept on purpose (docs/pages/oracle.md), not failures
    kept: list = field(default_factory=list)

    def report(self):
        lines = [f"{self.status} at version {self.version + 1 if self.version is not None else '-'}"]
        lines += [f"  {message}" for message in self.messages]
        return "\n".join(lines)


def masked_columns(version):
    """Columns filled with a random value or the current time: compared as NULL / not NULL only.

    ``uuid4`` defaults differ per row; the current time (``auto_now``, a
    ``timezone.now`` default, the database default that fills the old code's
    rows during the rollout) differs between the two sides' runs.
    """
    classes = build_models(version)
    out = {}
    for spec in version:
        model = classes[spec.name]
        if model._meta.proxy or not model._meta.managed:
            continue
        for name, f in spec.fields:
            if f.default in ("uuid4", "now") or f.auto_now:
                out.setdefault(model._meta.db_table, []).append(model._meta.get_field(name).column)
    return out


def _error(exc):
    """One line for the report; ``ORACLE_TRACEBACK=1`` prints the whole traceback (debugging)."""
    if os.environ.get("ORACLE_TRACEBACK"):
        traceback.print_exception(exc)
    lines = traceback.format_exception_only(type(exc), exc)
    return " ".join(line.strip() for line in lines)[:600]


def run_history(history, root, plain_db, safe_db, hooks=None, ignore=(), keep_going=True, background=False,
                in_flight=False):
    """Apply ``history`` both ways, comparing after each version; returns an Outcome.

    ``hooks`` maps a step name ("after_expand") to ``callable(index, plain, safe)``
    returning difference messages, for checks specific to one test.
    ``ignore`` drops difference messages containing any of these strings.
    With ``keep_going``, differences found after one version do not stop the
    history (later versions often show what an earlier slip leads to); an
    error in a step always does. ``background``: every copy runs as a background
    migration (``run_background``).

    ``in_flight``: each release's contract waits until the next release's
    expand has run (as when release N+1 ships before release N's
    contract); the comparison happens once, after the last contract.
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
        kept = []
        for index in range(len(history)):
            last = index == len(history) - 1
            with background_mode(background):
                outcome = _release(index, history, rows, plain, safe,
                                   {**hooks, "before_contract": run_background(index)} if background else hooks,
                                   contract=not in_flight or last)
            kept += [f"v{index + 1}: {message}" for message in outcome.kept]
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
            return Outcome("failed", first, found, dict(safe.files), kept=kept)
        return Outcome("passed", len(history) - 1, files=dict(safe.files), kept=kept)
    finally:
        sys.path.remove(str(root))
        for module in [name for name in sys.modules if name.startswith((plain.package, safe.package))]:
            del sys.modules[module]


#: safemigrate's words for a unique build that met duplicate rows (pg.steps.duplicates_error) and for a
#: type change that met a value the new type cannot hold (ChangeTypeViaCopy._refuse_uncastable).
DATA_REFUSALS = ("existing rows hold duplicate values", "which does not cast to")


def _release(index, history, rows, plain, safe, hooks, contract=True):
    version = history[index]
    old = history[index - 1] if index else None
    try:
        refused = check_errors(version)
    except KeyError as exc:  # a shrunk history lost a model another one inherits from
        return Outcome("invalid", index, [f"models cannot be built: no model {exc}"])
    if refused:  # models Django's own checks refuse: not a finding
        return Outcome("invalid", index, [f"Django's system checks: {refused[0]}"])
    try:
        plain.makemigrations(version)
    except Exception as exc:  # the history is not something Django can do: not a finding
        return Outcome("invalid", index, [f"plain makemigrations: {_error(exc)}"])
    pending = safe.unapplied()  # in flight: the earlier releases' contracts not yet applied
    try:
        safe.makemigrations(version)
    except UnsafeChange as exc:
        return Outcome("refused", index, [str(exc)])
    except Exception as exc:
        return Outcome("failed", index, [f"makemigrations --safe crashed: {_error(exc)}"], stop=True)
    # Plain Django: the old code writes (inserts, updates, deletes), migrate,
    # the new code writes.
    try:
        old_writes = write_rows(rows, old, plain, 2, deletes=True) if old else []
        plain.migrate()
        new_writes = write_rows(rows, version, plain, 2 if old else 4, updates=bool(old), deletes=bool(old),
                                new=True)
    except Exception as exc:
        return Outcome("invalid", index, [f"plain Django: {_error(exc)}"])
    # safemigrate: expand; during the rollout the old and then the new code
    # write the same rows, then the old code updates a row the new code
    # created; contract.
    try:
        safe.migrate("expand")
        if safe.held_expand():
            # Blocked behind an earlier contract: finish the earlier release first, as migrate says.
            safe.migrate("all", only=pending)
            safe.migrate("expand")
    except Exception as exc:
        if any(words in str(exc) for words in DATA_REFUSALS):
            # The rows break the new constraint or type, and safemigrate stopped naming them with nothing
            # lost: what it promises. Plain Django either cast with truncation (text -> varchar(3) through
            # USING ::varchar(3)) or migrated only after the old code's delete had removed the row.
            return Outcome("refused", index, [f"safemigrate expand stopped on the data: {_error(exc)}"])
        return Outcome("failed", index, [f"safemigrate expand: {_error(exc)}"], stop=True)
    messages = []
    if "after_expand" in hooks:
        messages += hooks["after_expand"](index, plain, safe)
    for who, actions in (("old", old_writes), ("new", new_writes)):
        try:
            safe.replay(actions)
        except Exception as exc:
            return Outcome("failed", index, [*messages, f"{who} code write after expand: {_error(exc)}"], stop=True)
    if old:
        crossed = cross_updates(rows, old, version, plain, safe)
        if crossed:
            return Outcome("failed", index, [*messages, *crossed], stop=True)
    if "before_contract" in hooks:
        messages += hooks["before_contract"](index, plain, safe)
    if not contract:  # in flight: this release's contract waits for the next release's expand
        return Outcome("passed", index, messages)
    try:
        safe.migrate("all")
    except Exception as exc:
        return Outcome("failed", index, [*messages, f"safemigrate contract: {_error(exc)}"], stop=True)
    masked = masked_columns(version)
    found = catalog.diff(catalog.snapshot(plain.connection, masked), catalog.snapshot(safe.connection, masked))
    kept = [message for message in found if message.startswith(catalog.KEPT)]
    messages += [message for message in found if not message.startswith(catalog.KEPT)]
    pending = safe.pending_changes(version)
    if pending:
        messages.append("makemigrations --check after contract is not clean: " + "; ".join(pending))
    plain_pending = plain.pending_changes(version)
    if plain_pending and not messages:
        return Outcome("invalid", index, ["plain Django's own state is not clean: " + "; ".join(plain_pending)])
    return Outcome("failed" if messages else "passed", index, messages, kept=kept)



# -- background mode ------------------------------------------------------------------


@contextlib.contextmanager
def background_mode(on):
    """With ``on``, makemigrations --safe writes every copy as ``background=True`` (BACKGROUND_MIN_ROWS 0)."""
    if not on:
        yield
        return
    from django.conf import settings

    with override_settings(SAFEMIGRATE={**getattr(settings, "SAFEMIGRATE", {}), "BACKGROUND_MIN_ROWS": 0,
                                        "BACKGROUND_FINALIZE_INLINE_S": 600}):
        yield


def run_background(index):
    """Between expand and contract: the runner copies (``backfills run``), except in the second release
    (the first that can copy), whose contract finalizes the copies itself (inline, within
    BACKGROUND_FINALIZE_INLINE_S)."""
    def hook(_, plain, safe):
        from safemigrate.pg.background_runner import run_pending

        if index == 1:
            return []
        with safe.active():
            summary = run_pending(safe.database.alias)
        return [f"background migration {name} failed: {error.splitlines()[0]}" for name, error in summary.failed]

    return hook
