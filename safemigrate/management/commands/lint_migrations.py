"""``manage.py lint_migrations``: the risky operations in migration files, for people and for CI.

Reads migration files in dependency order and asks ``safemigrate.lint`` about
each operation; needs no database unless ``--unapplied`` or ``--table-sizes``
is given, so it runs in any CI job. Exit codes: 0 clean (or findings without
``--fail-on-risky``), 1 unignored errors or warnings with ``--fail-on-risky``,
2 usage or configuration errors.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import CreateModel
from django.db.migrations.state import ProjectState

from safemigrate import lint
from safemigrate.conf import conf
from safemigrate.lint_ignore import IgnoreConfigError, matching_ignore, migration_ignores, settings_ignores
from safemigrate.lint_report import Result, render, sort_key

USAGE = 2


def _fail(message):
    return CommandError(message, returncode=USAGE)


def migration_file(migration):
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


def files_added_since(ref):
    """Absolute paths of files added since ``ref`` (``git diff --diff-filter=A ref...``)."""
    def git(*args):
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.getcwd())
        if result.returncode != 0:
            raise _fail(f"--since {ref}: `git {' '.join(args)}` failed: {result.stderr.strip()}. Run the "
                        f"command inside the git checkout, and fetch the ref first in shallow CI clones "
                        f"(git fetch origin {ref}).")
        return result.stdout
    top = Path(git("rev-parse", "--show-toplevel").strip())
    names = git("diff", "--name-only", "--diff-filter=A", f"{ref}...").splitlines()
    return {str((top / name).resolve()) for name in names if name.strip()}


def table_sizes(connection):
    """{table: estimated rows} from ``pg_class.reltuples`` (tables never analysed are left out)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (current_schemas(false)) AND c.reltuples >= 0")
        return dict(cursor.fetchall())


class Command(BaseCommand):
    help = (
        "Report each risky operation in existing migrations (third-party ones included): the lock "
        "it takes or what it breaks for the running code, and the safe alternative."
    )

    def add_arguments(self, parser):
        parser.add_argument("targets", nargs="*", metavar="app_label_or_file",
                            help="Only these apps, or only these migration files (paths ending in .py).")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="Database for --unapplied and --table-sizes.")
        parser.add_argument("--unapplied", action="store_true", help="Only migrations not applied yet.")
        parser.add_argument("--since", metavar="REF",
                            help="Only migration files added in git since REF (git diff --diff-filter=A REF...).")
        parser.add_argument("--format", choices=["text", "json", "sarif"], default="text",
                            help="Output format (default text).")
        parser.add_argument("--table-sizes", action="store_true",
                            help="Read table sizes (pg_class.reltuples) from --database and rank findings by "
                                 "expected lock time.")
        parser.add_argument("--fail-on-risky", action="store_true",
                            help="Exit with status 1 when an error or warning is found that no ignore covers.")

    def handle(self, *args, **options):
        notes = []
        try:
            ignores = settings_ignores(conf.lint_ignore, notes)
        except IgnoreConfigError as exc:
            raise _fail(str(exc)) from None
        app_labels, paths = self.split_targets(options["targets"])
        since = files_added_since(options["since"]) if options["since"] else None
        needs_db = options["unapplied"]
        loader = MigrationLoader(connections[options["database"]] if needs_db else None, ignore_no_migrations=True)
        unknown = set(app_labels) - {app for app, _ in loader.disk_migrations}
        if unknown:
            raise _fail(f"No migrations found for: {', '.join(sorted(unknown))}")
        results = self.collect(loader, app_labels, paths, since, options["unapplied"], ignores, notes)
        if options["table_sizes"]:
            self.add_table_sizes(results, options["database"])
        for note in notes:
            self.stderr.write(f"Deprecated: {note}")
        ordered = [r for _, r in sorted(enumerate(results), key=lambda item: sort_key(item[1], item[0]))]
        render(ordered, options["format"], self.stdout.write, self.style, options["verbosity"])
        if options["fail_on_risky"] and any(r.ignore is None and r.severity != "note" for r in results):
            raise SystemExit(1)

    @staticmethod
    def split_targets(targets):
        app_labels, paths = [], set()
        for target in targets:
            if target.endswith(".py") or os.sep in target or "/" in target:
                path = Path(target).resolve()
                if not path.is_file():
                    raise _fail(f"{target}: no such migration file.")
                paths.add(str(path))
            else:
                app_labels.append(target)
        return app_labels, paths

    def collect(self, loader, app_labels, paths, since, unapplied, settings_ignore_list, notes):
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
            raise _fail(f"Not migration files of an installed app: {', '.join(sorted(paths - matched))}")
        state = ProjectState(real_apps=loader.unmigrated_apps)
        results, new_tables = [], set()
        for key in ordered:
            migration = graph.nodes[key]
            path = files[key]
            selected = (not app_labels or key[0] in app_labels) and (not paths or path in paths) and \
                (since is None or path in since) and not (unapplied and key in loader.applied_migrations)
            if not selected:
                for operation in migration.operations:
                    operation.state_forwards(key[0], state)
                continue
            try:
                ignores = migration_ignores(migration, notes) + settings_ignore_list
            except IgnoreConfigError as exc:
                raise _fail(str(exc)) from None
            fresh = set(new_tables) if new_set else set()
            lines = operation_lines(path) if path else []
            package = third_party_package(path)
            for index, operation in enumerate(migration.operations):
                if isinstance(operation, CreateModel):
                    fresh.add(lint.table_of_options(key[0], operation))
                fresh |= set(lint.tables_created_by_sql(operation))
                for finding in lint.findings(operation, state, key[0]):
                    if finding.table is not None and finding.table in fresh:
                        continue  # a table created by a new migration has no rows and no traffic yet
                    ignore = matching_ignore(ignores, key[0], key[1], finding.code)
                    results.append(Result(key[0], key[1], path, lines[index] if index < len(lines) else None,
                                          index, finding, package is not None, package, None, ignore))
                operation.state_forwards(key[0], state)
            if new_set:
                new_tables |= fresh
        return results

    def add_table_sizes(self, results, database):
        try:
            sizes = table_sizes(connections[database])
        except Exception as exc:  # no database in this CI job: sizes are optional
            self.stderr.write(f"--table-sizes: could not read table sizes from {database!r} ({exc}); "
                              f"findings are listed in migration order.")
            return
        for result in results:
            result.rows = sizes.get(result.finding.table)
