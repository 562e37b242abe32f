"""Before ``migrate`` runs anything: may the migration role do what the plan needs?

A non-atomic migration that fails on "must be owner of table" half-way has already
built an index or added a column; an atomic one rolls back, but only after holding
its locks. On a managed database (docs/pages/roles.md) the usual cause is a grant
nobody thought of: a table created by another role, a schema the migration role may
not create in, django-pgtrigger's helper function in ``public``. So the commands ask
the catalog first and stop with one message naming each missing grant and its object.

What is checked, from the migrations' operations and the state before each one:

* ownership (or membership of the owner) of every existing table an operation
  alters, including tables named by ``RunSQL``;
* ``REFERENCES`` on the tables new foreign keys point at;
* ``CREATE`` on the schema new objects go to, when an operation creates one (a
  table, a compatibility view, a trigger function, the backfill progress table);
* django-pgtrigger's helper function, when an operation installs a trigger;
* read and write access to the backfill progress table, when it exists;
* the archive schema (``ARCHIVE_SCHEMA``: usable, or creatable), when a contract
  step would archive what it drops (``ARCHIVE`` not off for the app): without
  it the step fails half-way through the contract.

Operations of other packages can say what they need with three attributes:
``creates_objects = True``, ``installs_triggers = True`` and ``archives = True``.
"""

from dataclasses import replace

from django.conf import settings
from django.db.backends.utils import truncate_name
from django.db.migrations.operations.base import Operation
from django.db.migrations.operations.models import ModelOperation
from django.db.migrations.state import ProjectState

from ..conf import conf
from ..exceptions import MissingPrivilegeError
from ..pg import privileges
from ..pg.backfill import PROGRESS_TABLE
from ..pg.classify import classify, split_statements

#: Operations that create objects in the schema new objects go to.
CREATES_OBJECTS = {
    "CreateModel", "RenameModelWithView", "DropCompatibilityView", "RenameViaCopy", "FinishRenameViaCopy",
    "ChangeTypeViaCopy", "ChangePrimaryKeyToBigint", "Backfill", "RunPythonBatched", "AddTrigger",
    "CompiledTrigger",
}
#: Operations that install a trigger through django-pgtrigger's template (its helper function).
INSTALLS_TRIGGERS = {"RenameViaCopy", "FinishRenameViaCopy", "ChangeTypeViaCopy", "ChangePrimaryKeyToBigint",
                     "AddTrigger"}
#: Operations that read and write the backfill progress table.
BACKFILLS = {"RenameViaCopy", "FinishRenameViaCopy", "ChangeTypeViaCopy", "ChangePrimaryKeyToBigint",
             "Backfill", "RunPythonBatched"}
#: Contract operations that archive (``pg.archive``) what they would drop, unless ARCHIVE is off.
ARCHIVES = {"DropColumn", "DropTable", "FinishRenameViaCopy", "FinishChangeTypeViaCopy",
            "FinishChangePrimaryKeyToBigint"}
#: Operations that change no table.
STATE_ONLY = {"RenameModelKeepTable", "RemoveModelSafely", "ContractJoin", "AlterModelOptions",
              "AlterModelManagers", "RunPython"}


def _flag(operation, attribute, names):
    value = getattr(operation, attribute, None)
    return bool(value) if value is not None else type(operation).__name__ in names


def _archives(operation):
    """Whether ``operation`` (or one of its database operations) archives what it drops."""
    if _flag(operation, "archives", ARCHIVES):
        return True
    return any(_archives(inner) for inner in getattr(operation, "database_operations", None) or [])


def _db_table(state, app_label, model_name, connection):
    model = state.models.get((app_label, model_name.lower())) if model_name else None
    if model is None:
        return None
    table = model.options.get("db_table") or f"{app_label}_{model.name_lower}"
    return truncate_name(table, connection.ops.max_name_length())


def _relation_targets(fields, state, app_label, connection):
    for _, field in fields:
        remote = getattr(field, "remote_field", None)
        if remote is None or getattr(field, "many_to_many", False) or not getattr(field, "db_constraint", True):
            continue
        to = remote.model
        if isinstance(to, str):
            target_app, _, target_model = to.rpartition(".") if "." in to else (app_label, "", to)
            target_app = target_app or app_label
        else:
            target_app, target_model = to._meta.app_label, to._meta.model_name
        if target_model == "self":
            continue
        table = _db_table(state, target_app, target_model, connection)
        if table:
            yield table


def _operation_tables(operation, state, app_label, connection):
    """(tables it alters, tables new foreign keys point at) for one operation."""
    name = type(operation).__name__
    if name in STATE_ONLY:
        return set(), set()
    altered, referenced = set(), set()
    for attribute in ("table_name", "old_table"):
        value = getattr(operation, attribute, None)
        if isinstance(value, str):
            altered.add(value)
    model_name = getattr(operation, "model_name", None) or getattr(operation, "old_name", None)
    if model_name is None and isinstance(operation, ModelOperation) and name != "CreateModel":
        model_name = operation.name
    table = _db_table(state, app_label, model_name, connection) if isinstance(model_name, str) else None
    if table:
        altered.add(table)
    field = getattr(operation, "field", None)
    if field is not None:
        referenced.update(_relation_targets([(None, field)], state, app_label, connection))
    if name == "CreateModel":
        referenced.update(_relation_targets(operation.fields, state, app_label, connection))
    for inner in getattr(operation, "database_operations", None) or []:
        more_altered, more_referenced = _operation_tables(inner, state, app_label, connection)
        altered |= more_altered
        referenced |= more_referenced
    if name == "RunSQL":
        sqls = operation.sql if isinstance(operation.sql, (list, tuple)) else [operation.sql]
        for sql in sqls:
            text = sql[0] if isinstance(sql, (list, tuple)) else sql
            if isinstance(text, str):
                for statement in split_statements(text):
                    info = classify(statement)
                    if info.table and info.takes_lock and not info.creates_table:
                        altered.add(info.table)
    return altered, referenced


def _unrendered(state):
    """A copy of ``state`` whose operations' ``state_forwards`` never render models (cheap)."""
    return ProjectState(models={key: model.clone() for key, model in state.models.items()},
                        real_apps=state.real_apps)


def requirements(plan, loader, connection, state=None):
    """What the migrations of ``plan`` need: tables to own, tables to reference, and why.

    ``state`` is the project state before the plan (what ``migrate`` passes to the
    executor); forwards migrations are walked through it in plan order, as the
    executor applies them. Backwards ones are read against the state after them.
    """
    needs = {"tables": {}, "references": {}, "create": None, "triggers": None, "backfill": None, "archive": None}
    running = _unrendered(state) if state is not None else None
    for migration, backwards in plan:
        label = f"{migration.app_label}.{migration.name}"
        if backwards or running is None:
            try:
                current = _unrendered(loader.project_state((migration.app_label, migration.name), at_end=backwards))
            except Exception:  # a graph Django itself cannot build: Django's error comes first
                continue
        else:
            current = running
        for operation in migration.operations:
            if not isinstance(operation, Operation):
                continue
            what = f"{label} ({operation.describe()})"
            altered, referenced = _operation_tables(operation, current, migration.app_label, connection)
            for table in altered:
                needs["tables"].setdefault(table, what)
            for table in referenced:
                needs["references"].setdefault(table, what)
            if _flag(operation, "creates_objects", CREATES_OBJECTS) or getattr(
                    getattr(operation, "field", None), "many_to_many", False):  # a join table
                needs["create"] = needs["create"] or what
            if _flag(operation, "installs_triggers", INSTALLS_TRIGGERS):
                needs["triggers"] = needs["triggers"] or what
            if type(operation).__name__ in BACKFILLS:
                needs["backfill"] = needs["backfill"] or what
            if not backwards and _archives(operation) and conf.archive_mode(migration.app_label):
                needs["archive"] = needs["archive"] or what
            if not backwards:
                try:
                    operation.state_forwards(migration.app_label, current)
                except Exception:  # the real run will report it
                    break
    return needs


def problems(plan, loader, connection, state=None):
    """Every missing grant the plan would run into (``pg.privileges.Problem``), [] when none."""
    if connection.vendor != "postgresql" or not plan or privileges.is_superuser(connection):
        return []
    needs = requirements(plan, loader, connection, state)
    found = []
    if needs["create"]:
        problem = privileges.current_schema_problem(connection)
        if problem:
            found.append(problem)
    found += privileges.table_problems(connection, set(needs["tables"]), needs["tables"])
    found += privileges.reference_problems(connection, set(needs["references"]) - set(needs["tables"]),
                                           needs["references"])
    if needs["triggers"]:
        problem = privileges.trigger_function_problem(connection, getattr(settings, "PGTRIGGER_SCHEMA", "public"))
        if problem:
            found.append(problem)
    if needs["backfill"]:
        problem = privileges.progress_table_problem(connection, PROGRESS_TABLE)
        if problem:
            found.append(problem)
    if needs["archive"]:
        problem = privileges.archive_schema_problem(connection, conf.archive_schema)
        if problem:
            found.append(replace(problem, why=f"{problem.why}; {needs['archive']} archives"))
    return found


def check(plan, loader, connection, state=None, command="migrate"):
    """Raise ``MissingPrivilegeError`` naming every missing grant; nothing has run yet."""
    found = problems(plan, loader, connection, state)
    if not found:
        return
    role = privileges.current_role(connection)
    lines = "\n".join(f"  - {problem.line()}" for problem in found)
    raise MissingPrivilegeError(
        f"{command} stopped before changing anything: the migration role {role} lacks "
        f"{'a grant' if len(found) == 1 else f'{len(found)} grants'} the planned migrations need (a migration "
        f"that fails half-way keeps the steps it already made).\n{lines}\n"
        f"Give {'it' if len(found) == 1 else 'them'} as an administrator (docs/pages/roles.md lists what the "
        f"migration role needs), then run {command} again.",
        problems=found,
    )
