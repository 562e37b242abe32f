"""``migrate --plan --json`` / ``migrate_contract --plan|--check --json``: the plan for machines.

Deploy tooling needs the same facts a person reads in ``--plan``, without
parsing text: which expand and contract migrations are pending, what each
operation does and which lock it takes, which expand migrations are blocked
behind a contract, and whether the contract gate is open. The schema is
documented in docs/pages/plan-json.md; ``SCHEMA_VERSION`` changes when a
field changes meaning or disappears (new fields may appear without it).
"""

import json
import sys

from django.core.management.base import CommandError
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from ..stages import Stage, migration_stage, operation_stage, split_plan
from . import gate, renames, rules
from .releases import ancestors, blocked_expand

SCHEMA_VERSION = 1


def _targets(executor, options):
    graph = executor.loader.graph
    app_label, name = options.get("app_label"), options.get("migration_name")
    if app_label and app_label not in executor.loader.migrated_apps:
        raise CommandError(f"App '{app_label}' does not have migrations.")
    if app_label and name:
        if name == "zero":
            return [(app_label, None)]
        try:
            migration = executor.loader.get_migration_by_prefix(app_label, name)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
        return [(app_label, migration.name)]
    if app_label:
        return [key for key in graph.leaf_nodes() if key[0] == app_label]
    return graph.leaf_nodes()


def _operations(executor, migration):
    described = []
    for operation, state in rules.operation_states(executor.loader, migration):
        entry = {
            "type": operation.__class__.__name__,
            "description": operation.describe(),
            "stage": str(operation_stage(operation)),
            "lock": rules.lock_for(operation, state, migration.app_label),
        }
        window = renames.window_of(operation, state, migration.app_label)  # issue 23
        if window:
            entry["rename_window"] = window
        described.append(entry)
    return described


def _migration(executor, migration):
    entry = {
        "app": migration.app_label,
        "name": migration.name,
        "stage": str(migration_stage(migration)),
        "atomic": migration.atomic,
        "dependencies": [f"{app}.{name}" for app, name in migration.dependencies],
        "operations": _operations(executor, migration),
    }
    if migration_stage(migration) is Stage.CONTRACT:
        entry["contract_delay_seconds"] = gate._delay_of(migration)
    return entry


def build(command_name, connection, options):
    """The plan document (a dict) for ``command_name`` on ``connection``."""
    executor = MigrationExecutor(connection)
    graph = executor.loader.graph
    plan = executor.migration_plan(_targets(executor, options))
    forwards = [(m, b) for m, b in plan if not b]
    backwards = [m for m, b in plan if b]
    runnable, held = split_plan(forwards, graph)
    blocked = blocked_expand(held, graph)
    if command_name == "migrate":
        will_apply = [m for m, _ in runnable]
    else:
        will_apply = [m for m, _ in forwards]
    status = gate.evaluate(connection, graph, forwards)
    label = lambda m: f"{m.app_label}.{m.name}"  # noqa: E731
    blocked_ok = command_name != "migrate" or not blocked
    needed = set()
    for migration, _ in held:
        needed |= ancestors(graph, (migration.app_label, migration.name))
    expand_first = [label(m) for m, _ in runnable if (m.app_label, m.name) in needed] if command_name != "migrate" else []
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command_name,
        "database": connection.alias,
        "expand": [_migration(executor, m) for m, _ in forwards if migration_stage(m) is Stage.EXPAND],
        "contract": [_migration(executor, m) for m, _ in forwards if migration_stage(m) is Stage.CONTRACT],
        "unapply": [label(m) for m in backwards],
        "will_apply": [label(m) for m in will_apply],
        "held_back": [label(m) for m, _ in held] if command_name == "migrate" else [],
        "blocked": [{"migration": label(m), "waits_for": [f"{a}.{n}" for a, n in waits]} for m, waits in blocked],
        "expand_first": expand_first,
        "gate": status.as_dict(),
        "rename_windows": renames.open_windows(connection),
        "ok": blocked_ok and not expand_first and (command_name == "migrate" or status.open),
    }


def emit(command, options):
    """Print the document; ``--check`` exits 1 when the command has something to apply."""
    if not (options.get("plan") or options.get("check_unapplied")):
        raise CommandError("--json goes with --plan or --check: it describes the plan, it does not run it.")
    connection = connections[options["database"]]
    document = build("migrate" if getattr(command, "hold_contract", True) else "migrate_contract",
                     connection, options)
    command.stdout.write(json.dumps(document, indent=2, default=str))
    if options.get("check_unapplied"):
        pending = document["contract"] if document["command"] == "migrate_contract" else (
            document["will_apply"] or document["blocked"])
        if pending:
            sys.exit(1)
