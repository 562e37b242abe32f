"""Model histories, and applying one the plain-Django way and the safemigrate way.

A history is a list of versions; a version is a tuple of ``M`` (model specs)
made of ``F`` (field specs). Specs are plain frozen data so that Hypothesis
can generate and shrink them and a failure prints as something a person can
paste into a regression test.

Each side of the comparison is a scratch database plus a throw-away
migrations package for the ``oracleapp`` app. Per version, both sides run
the autodetector against the migration loader's state (as ``makemigrations``
does), write the files with Django's writer (``StagedMigrationWriter`` for
safemigrate), load them back and apply them in-process:

* plain Django: the old code's writes, then ``migrate``;
* safemigrate: ``migrate`` holding contract migrations back (``split_plan``),
  the old code's writes on the expanded schema, then the contract migrations.

The old code's writes are the same statements on both sides, built from the
previous version's rendered models the way the ORM would build them. After
each version the catalogs and rows are compared (``catalog.diff``) and
``makemigrations --check`` must find nothing on either side.
"""

import contextlib
import copy
import decimal
import importlib
import sys
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.db import connections, models
from django.db.utils import load_backend
from django.db.migrations.autodetector import MigrationAutodetector
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.test.utils import override_settings

from safemigrate.autodetector import SafeMigrationAutodetector, UnsafeChange
from safemigrate.stages import split_plan
from safemigrate.writer import StagedMigrationWriter

from . import catalog

APP = "oracleapp"


def uuid4():
    """A stand-in for ``uuid.uuid4`` when printing specs; the field gets the real one."""
    return uuid.uuid4()


class PlainJSONField(models.TextField):
    """A column of type ``json`` (no equality operator, unlike jsonb)."""

    def db_type(self, connection):
        return "json"


# -- specs ---------------------------------------------------------------------

NUMERIC = ("int", "bigint", "positive", "decimal")
STRING = ("char", "text")
RELATIONS = ("fk", "o2o", "m2m")


@dataclass(frozen=True)
class F:
    """One field. ``default``/``db_default`` None means "not given"; ``"uuid4"`` is the callable."""

    kind: str
    null: bool = False
    default: object = None
    db_default: object = None
    unique: bool = False
    db_index: bool = False
    max_length: int = 50
    #: (max_digits, decimal_places) of a decimal
    digits: tuple = (10, 2)
    to: str = None
    on_delete: str = "CASCADE"

    def __repr__(self):
        # Only what differs from the defaults: shrunk examples stay readable.
        changed = [f"{name}={getattr(self, name)!r}" for name in
                   ("null", "default", "db_default", "unique", "db_index", "max_length", "digits", "to", "on_delete")
                   if getattr(self, name) != F.__dataclass_fields__[name].default]
        return f"F({', '.join([repr(self.kind), *changed])})"


@dataclass(frozen=True)
class M:
    """One model: fields in order, its primary key and Meta options.

    ``pk``: "auto" / "bigauto" (AutoField / BigAutoField) or "int" / "bigint"
    (a plain integer key the code assigns).

    ``indexes``: ((name, (field, ...)), ...); ``constraints``:
    (("unique", name, (field, ...), nulls_distinct), ("check", name, field, minimum), ...);
    ``unique_together``: ((field, ...), ...).
    """

    name: str
    fields: tuple = ()
    pk: str = "bigauto"
    db_table: str = None
    unique_together: tuple = ()
    indexes: tuple = ()
    constraints: tuple = ()

    def field(self, name):
        return dict(self.fields).get(name)

    def __repr__(self):
        parts = [repr(self.name), repr(self.fields)]
        for name in ("pk", "db_table", "unique_together", "indexes", "constraints"):
            if getattr(self, name) != M.__dataclass_fields__[name].default:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"M({', '.join(parts)})"


def build_field(spec):
    kwargs = {}
    if spec.null:
        kwargs["null"] = True
    if spec.default is not None:
        kwargs["default"] = uuid.uuid4 if spec.default == "uuid4" else spec.default
    if spec.db_default is not None:
        kwargs["db_default"] = spec.db_default
    if spec.unique and spec.kind != "o2o":
        kwargs["unique"] = True
    if spec.db_index:
        kwargs["db_index"] = True
    kind = spec.kind
    if kind in ("fk", "o2o"):
        cls = models.ForeignKey if kind == "fk" else models.OneToOneField
        return cls(f"{APP}.{spec.to}", on_delete=getattr(models, spec.on_delete), **kwargs)
    if kind == "m2m":
        return models.ManyToManyField(f"{APP}.{spec.to}")
    simple = {"int": models.IntegerField, "bigint": models.BigIntegerField, "positive": models.PositiveIntegerField,
              "text": models.TextField, "bool": models.BooleanField, "uuid": models.UUIDField,
              "json": models.JSONField, "plainjson": PlainJSONField}
    if kind == "decimal":
        return models.DecimalField(max_digits=spec.digits[0], decimal_places=spec.digits[1], **kwargs)
    if kind == "char":
        return models.CharField(max_length=spec.max_length, **kwargs)
    return simple[kind](**kwargs)


def model_state(spec):
    if spec.pk in ("auto", "bigauto"):
        pk = (models.BigAutoField if spec.pk == "bigauto" else models.AutoField)(
            primary_key=True, serialize=False, auto_created=True)
    else:
        pk = (models.BigIntegerField if spec.pk == "bigint" else models.IntegerField)(primary_key=True, serialize=False)
    fields = [("id", pk)]
    fields += [(name, build_field(f)) for name, f in spec.fields]
    options = {}
    if spec.db_table:
        options["db_table"] = spec.db_table
    if spec.unique_together:
        options["unique_together"] = {tuple(names) for names in spec.unique_together}
    options["indexes"] = [models.Index(fields=list(names), name=name) for name, names in spec.indexes]
    constraints = []
    for constraint in spec.constraints:
        if constraint[0] == "unique":
            _, name, names, nulls_distinct = constraint
            constraints.append(models.UniqueConstraint(fields=list(names), name=name, nulls_distinct=nulls_distinct))
        else:
            _, name, column, minimum = constraint
            constraints.append(models.CheckConstraint(condition=models.Q(**{f"{column}__gte": minimum}), name=name))
    options["constraints"] = constraints
    return ModelState(APP, spec.name, fields, options=options)


def version_state(version):
    state = ProjectState()
    for spec in version:
        state.add_model(model_state(spec))
    return state


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
        settings_dict = copy.deepcopy(admin.settings_dict)
        settings_dict["NAME"] = self.name
        # Set as a connection object, not added to the settings: Django's test
        # cases refuse connections to configured aliases they were not told
        # about, and allow connections created on the fly.
        connections[self.alias] = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, self.alias)
        return self

    @property
    def connection(self):
        return connections[self.alias]

    def reset(self):
        """An empty ``public`` schema: faster than a new database per history."""
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


class StepFailed(Exception):
    """A side could not complete a step; ``where`` says which."""

    def __init__(self, where, error):
        super().__init__(f"{where}: {error}")
        self.where = where
        self.error = error


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


# -- what the old code writes ------------------------------------------------------


class Rows:
    """Deterministic rows for a history, legal under every version's constraints.

    Values are drawn from small pools (duplicates, NULLs, '%' and quotes in
    strings, edge numbers) except for fields that are unique somewhere in the
    history, which get a value of their own per row. Fields are known by name
    alone, whatever the model: a renamed model keeps its fields' rules.
    """

    def __init__(self, history):
        self.serial = 0
        self.ids = {}  # table -> inserted ids in order
        self.links = set()
        #: table -> ids some row referenced when it was written (deleting one tests stale references)
        self.referenced = {}
        self.unique = set()
        self.no_nulls = set()
        for version in history:
            for spec in version:
                for name, f in spec.fields:
                    if f.unique or f.kind == "o2o":
                        self.unique.add(name)
                for names in spec.unique_together:
                    self.unique.update(names)
                for constraint in spec.constraints:
                    if constraint[0] == "unique":
                        self.unique.update(constraint[2])
                        if constraint[3] is False:
                            self.no_nulls.update(constraint[2])

    def value(self, spec, name, f, serial):
        key = name
        if f.null and key not in self.no_nulls and serial % 3 == 0:
            return None
        unique = key in self.unique
        if f.kind in ("int", "bigint", "positive"):
            return 1000 + serial if unique else [0, 7, 99999999, 1][serial % 4]
        if f.kind == "decimal":
            return decimal.Decimal(1000 + serial) + decimal.Decimal("0.25") if unique else \
                [decimal.Decimal("0"), decimal.Decimal("12.50"), decimal.Decimal("99999.99")][serial % 3]
        if f.kind in STRING:
            text = f"v{serial}%" if unique else ["", "100%", "it's", "x"][serial % 4]
            # What the code writes fits its own model (forms and validators see to it).
            return text[:f.max_length] if f.kind == "char" else text
        if f.kind == "bool":
            return serial % 2 == 0
        if f.kind == "uuid":
            return uuid.UUID(int=serial + 1)
        if f.kind in ("json", "plainjson"):
            return {"n": serial, "s": "50%"} if f.kind == "json" else '{"n": %d}' % serial
        raise ValueError(f.kind)

    def target(self, table, key, used):
        ids = [pk for pk in self.ids.get(table, []) if pk not in used]
        if not ids:
            return None
        # Spread references over the targets where the column is part of a unique key.
        return ids[self.serial % len(ids)] if key in self.unique else ids[-1]

    def insert(self, state, spec, connection):
        """The INSERT the ORM of ``state``'s model would send for one new row, or None."""
        model = state.apps.get_model(APP, spec.name)
        self.serial += 1
        columns, params = [], []
        for model_field in model._meta.concrete_fields:
            if model_field.primary_key:
                if spec.pk in ("int", "bigint"):  # the code assigns the key
                    columns.append(connection.ops.quote_name(model_field.column))
                    params.append(self.serial)
                continue
            f = spec.field(model_field.name)
            if f.kind in ("fk", "o2o"):
                target_table = model_field.related_model._meta.db_table
                used = self.used_o2o(model._meta.db_table, model_field.column) if f.kind == "o2o" else set()
                value = None if (f.null and self.serial % 2) else self.target(target_table, model_field.name, used)
                if value is None and not f.null:
                    return None
                if f.kind == "o2o" and value is not None:
                    used.add(value)
                if value is not None:
                    self.referenced.setdefault(target_table, set()).add(value)
            elif f.db_default is not None and f.default is None and self.serial % 2 and \
                    model_field.name not in self.unique:
                continue  # the ORM sends DEFAULT: the database's default fills it
            else:
                value = self.value(spec, model_field.name, f, self.serial)
                if value is None and not f.null:
                    value = self.value(replace(spec), model_field.name, replace(f, null=False), self.serial)
                value = model_field.get_db_prep_save(value, connection)
            columns.append(connection.ops.quote_name(model_field.column))
            params.append(value)
        table = connection.ops.quote_name(model._meta.db_table)
        pk = connection.ops.quote_name(model._meta.pk.column)
        if columns:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(params))}) RETURNING {pk}"
        else:
            sql = f"INSERT INTO {table} DEFAULT VALUES RETURNING {pk}"
        return sql, params

    _o2o = None

    def used_o2o(self, table, column):
        self._o2o = self._o2o or {}
        return self._o2o.setdefault((table, column), set())

    def update(self, state, spec, connection):
        """``save()`` of the table's first row after changing one non-key field, or None.

        Like the ORM's save(), the UPDATE sets every column: the changed one to
        its new value, the others to what was loaded (here: to themselves),
        so triggers on any of the old code's columns fire as in production.
        """
        model = state.apps.get_model(APP, spec.name)
        ids = self.ids.get(model._meta.db_table)
        if not ids:
            return None
        quote = connection.ops.quote_name
        columns = [f for f in model._meta.concrete_fields if not f.primary_key]
        for model_field in columns:
            f = spec.field(model_field.name)
            if f is None or f.kind in RELATIONS:
                continue
            self.serial += 1
            value = self.value(spec, model_field.name, replace(f, null=False), self.serial)
            value = model_field.get_db_prep_save(value, connection)
            assignments = [f"{quote(other.column)} = %s" if other is model_field else
                           f"{quote(other.column)} = {quote(other.column)}" for other in columns]
            return (f"UPDATE {quote(model._meta.db_table)} SET {', '.join(assignments)} "
                    f"WHERE {quote(model._meta.pk.column)} = %s", [value, ids[0]])
        return None

    def delete(self, state, spec, side):
        """The new code deletes the newest row nothing of its own references, or None.

        The ORM of ``state`` would cascade along its relations; a row no
        relation of ``state`` points at is deleted with one plain DELETE. A
        reference the new code no longer knows about (a removed field's
        foreign key) must not stop it.
        """
        model = state.apps.get_model(APP, spec.name)
        table = model._meta.db_table
        references = [(m._meta.db_table, f.column) for m in state.apps.get_models(include_auto_created=True)
                      for f in m._meta.concrete_fields if f.is_relation and f.related_model is model]
        quote = side.connection.ops.quote_name
        candidates = list(reversed(self.ids.get(table, [])[1:]))  # the first row is the one updates change
        # Rows something referenced once come first: the reference may live on
        # in a column the new code dropped from its models.
        referenced = self.referenced.get(table, set())
        candidates.sort(key=lambda pk: pk not in referenced)
        for pk in candidates:
            used = any(side.execute([(f"SELECT count(*) FROM {quote(t)} WHERE {quote(c)} = %s", [pk])])[0]
                       for t, c in references)
            if not used:
                self.ids[table].remove(pk)
                return f"DELETE FROM {quote(table)} WHERE {quote(model._meta.pk.column)} = %s", [pk]
        return None

    def link(self, state, spec, name, connection):
        """An INSERT into an M2M table linking a source row to a target row, or None."""
        model = state.apps.get_model(APP, spec.name)
        through = model._meta.get_field(name).remote_field.through
        source, target = [f for f in through._meta.concrete_fields if not f.primary_key]
        sources = self.ids.get(source.related_model._meta.db_table, [])
        targets = self.ids.get(target.related_model._meta.db_table, [])
        for a in sources:
            for b in reversed(targets):
                if (through._meta.db_table, a, b) not in self.links:
                    self.links.add((through._meta.db_table, a, b))
                    self.referenced.setdefault(source.related_model._meta.db_table, set()).add(a)
                    self.referenced.setdefault(target.related_model._meta.db_table, set()).add(b)
                    quote = connection.ops.quote_name
                    return (f"INSERT INTO {quote(through._meta.db_table)} ({quote(source.column)}, {quote(target.column)}) "
                            f"VALUES (%s, %s)", [a, b])
        return None


def _parents_first(version):
    ordered, seen = [], set()

    def visit(spec, path=()):
        if spec.name in seen or spec.name in path:
            return
        for _, f in spec.fields:
            if f.kind in ("fk", "o2o") and f.to != spec.name:
                target = next((s for s in version if s.name == f.to), None)
                if target is not None:
                    visit(target, path + (spec.name,))
        seen.add(spec.name)
        ordered.append(spec)

    for spec in version:
        visit(spec)
    return ordered


def write_rows(rows, version, plain, inserts_per_model, updates=True, deletes=False):
    """The code of ``version`` writes rows on plain Django's side; returns the statements.

    The statements are built once, from the models of ``version`` rendered
    the way the ORM would send them, and run on plain Django's side (the
    primary keys it returns feed later references); the caller runs the same
    statements on safemigrate's side at the corresponding point of its rollout.
    """
    state = version_state(version)
    connection = plain.connection
    statements, tables = [], []
    for spec in _parents_first(version):
        table = state.apps.get_model(APP, spec.name)._meta.db_table
        for _ in range(inserts_per_model):
            statement = rows.insert(state, spec, connection)
            if statement is None:
                continue
            (pk,) = plain.execute([statement])
            rows.ids.setdefault(table, []).append(pk)
            statements.append(statement)
            tables.append(table)
        if updates:
            statement = rows.update(state, spec, connection)
            if statement:
                plain.execute([statement])
                statements.append(statement)
        for name, f in spec.fields:
            if f.kind == "m2m":
                statement = rows.link(state, spec, name, connection)
                if statement:
                    plain.execute([statement])
                    statements.append(statement)
    if deletes:
        for spec in reversed(_parents_first(version)):
            statement = rows.delete(state, spec, plain)
            if statement:
                plain.execute([statement])
                statements.append(statement)
    return statements


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
    import os
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
