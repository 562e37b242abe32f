"""Walk the migration graph and place each finding: migration, operation, line, table, whose code.

The command parses options and prints; this module decides which migrations
are linted and what counts as a new table. Every migration is walked, selected
or not, because the state the rules read (field types, relation targets,
managed flags) is built by replaying all operations in order.
"""

import ast
import sys
from pathlib import Path

from django.db.migrations.operations import CreateModel
from django.db.migrations.state import ProjectState

from . import background_lint, lint_partitions, renames, rules
from .lint_ignore import matching_ignore, migration_ignores
from .lint_report import Result


class UnknownMigrationFile(ValueError):
    """A path given on the command line that no installed app loads as a migration."""


def migration_file(migration):
    """The resolved path of the file a migration was loaded from (None for in-memory ones)."""
    module = sys.modules.get(type(migration).__module__)
    path = getattr(module, "__file__", None)
    return str(Path(path).resolve()) if path else None


def third_party_package(path):
    """The installed package a migration file belongs to, or None for the project's own code."""
    if path is None:
        return None
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            rest = parts[parts.index(marker) + 1:]
            return rest[0] if rest else marker
    return None


def operation_lines(path):
    """Line of each element of ``Migration.operations`` in the file (for SARIF and editors)."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError, TypeError):
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Migration":
            for statement in node.body:
                if isinstance(statement, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "operations" for t in statement.targets) and \
                        isinstance(statement.value, (ast.List, ast.Tuple)):
                    return [element.lineno for element in statement.value.elts]
    return []


def scan(loader, app_labels, paths, since, unapplied, settings_ignore_list, pending_fills=(), partitioned=None,
         pg_version=None):
    """Results for the selected migrations, walking every migration to keep the state right.

    Raises UnknownMigrationFile for paths that are no installed app's migration files and
    IgnoreConfigError for a malformed ``safemigrate_ignore``. ``pending_fills``: unfinished
    background migrations of the database (SAFE141, ``planning.background_lint``).
    ``partitioned`` (read from the database, see ``lint_partitions``) adds what only
    partitioned tables have.
    """
    graph = loader.graph
    ordered, seen = [], set()
    for leaf in sorted(graph.leaf_nodes()):
        for key in graph.forwards_plan(leaf):
            if key not in seen:
                seen.add(key)
                ordered.append(key)
    # With --since, file paths or --unapplied, the selected migrations are the new ones:
    # a table one of them creates has no rows yet when a later one alters it.
    new_set = bool(paths) or since is not None or unapplied
    files = {key: migration_file(graph.nodes[key]) for key in ordered}
    matched = {files[key] for key in ordered} & paths
    if paths - matched:
        raise UnknownMigrationFile(f"Not migration files of an installed app: {', '.join(sorted(paths - matched))}")
    state = ProjectState(real_apps=loader.unmigrated_apps)
    results, new_tables = [], set()
    windows_open = {}  # issue 23: tables in a rename window, as the migrations so far leave them
    for key in ordered:
        migration = graph.nodes[key]
        path = files[key]
        selected = (not app_labels or key[0] in app_labels) and (not paths or path in paths) and \
            (since is None or path in since) and not (unapplied and key in loader.applied_migrations)
        if not selected:
            for operation in migration.operations:
                renames.window_findings(operation, state, key[0], windows_open)
                operation.state_forwards(key[0], state)
            continue
        ignores = migration_ignores(migration) + settings_ignore_list
        fresh = set(new_tables) if new_set else set()
        lines = operation_lines(path) if path else []
        package = third_party_package(path)
        for index, operation in enumerate(migration.operations):
            if isinstance(operation, CreateModel):
                fresh.add(rules.table_of_options(key[0], operation))
            fresh |= set(rules.tables_created_by_sql(operation))
            found = [*rules.findings(operation, state, key[0]),
                     *renames.window_findings(operation, state, key[0], windows_open)]
            if partitioned:  # hook: issue 24
                found = [lint_partitions.adjust(f, partitioned) for f in found] + lint_partitions.findings(
                    operation, state, key[0], partitioned, pg_version)
            if pending_fills:
                found = [*found, *background_lint.findings(operation, state, key[0], pending_fills)]
            for finding in found:
                if finding.table is not None and finding.table in fresh:
                    continue  # a table created by a new migration has no rows and no traffic yet
                ignore = matching_ignore(ignores, key[0], key[1], finding.code)
                results.append(Result(key[0], key[1], path, lines[index] if index < len(lines) else None,
                                      index, finding, package is not None, package, None, ignore))
            operation.state_forwards(key[0], state)
        if new_set:
            new_tables |= fresh
    return results

