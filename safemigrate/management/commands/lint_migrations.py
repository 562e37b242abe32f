"""``manage.py lint_migrations``: the risky operations in migration files, for people and for CI.

Reads migration files in dependency order and asks ``safemigrate.planning.rules`` about
each operation; needs no database unless ``--unapplied`` or ``--table-sizes``
is given, so it runs in any CI job. Exit codes: 0 clean (or findings without
``--fail-on-risky``), 1 unignored errors or warnings with ``--fail-on-risky``,
2 usage or configuration errors.
"""

import os
import subprocess
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader

from safemigrate.conf import conf
from safemigrate.pg import partitions
from safemigrate.pg.background_state import UNFINISHED, all_rows
from safemigrate.planning.lint_ignore import IgnoreConfigError, settings_ignores
from safemigrate.planning.lint_report import render, sort_key
from safemigrate.planning.lint_scan import UnknownMigrationFile, scan

USAGE = 2


def _fail(message):
    return CommandError(message, returncode=USAGE)


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
            # The table each name resolves to (pg_table_is_visible: not a same-named one later on the
            # search path); a partitioned table's rows are its partitions'.
            "SELECT c.relname, CASE WHEN c.relkind = 'p' THEN (SELECT sum(greatest(p.reltuples, 0)) "
            "FROM pg_partition_tree(c.oid) t JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf) "
            "ELSE c.reltuples END::bigint FROM pg_class c "
            "WHERE c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid) AND NOT c.relispartition "
            "AND (c.relkind = 'p' OR c.reltuples >= 0)")
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
        try:
            ignores = settings_ignores(conf.lint_ignore)
        except IgnoreConfigError as exc:
            raise _fail(str(exc)) from None
        app_labels, paths = self.split_targets(options["targets"])
        since = files_added_since(options["since"]) if options["since"] else None
        needs_db = options["unapplied"]
        loader = MigrationLoader(connections[options["database"]] if needs_db else None, ignore_no_migrations=True)
        unknown = set(app_labels) - {app for app, _ in loader.disk_migrations}
        if unknown:
            raise _fail(f"No migrations found for: {', '.join(sorted(unknown))}")
        partitioned, pg_version = self.partitioned_tables(options) if (
            options["table_sizes"] or options["unapplied"]) else ({}, None)
        # A pending background copy makes a migration that drops or constrains its column unsafe (SAFE141).
        pending = all_rows(connections[options["database"]], UNFINISHED) if needs_db else ()
        try:
            results = scan(loader, app_labels, paths, since, options["unapplied"], ignores, pending,
                           partitioned=partitioned, pg_version=pg_version)
        except (IgnoreConfigError, UnknownMigrationFile) as exc:
            raise _fail(str(exc)) from None
        if options["table_sizes"]:
            self.add_table_sizes(results, options["database"])
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

    def partitioned_tables(self, options):
        """Which tables are partitioned (the linter then knows their rules); nothing when it cannot tell."""
        connection = connections[options["database"]]
        try:
            return partitions.partitioned_tables(connection), connection.pg_version
        except Exception as exc:  # no database in this CI job: partitions are optional
            self.stderr.write(f"could not read partitioned tables from {options['database']!r} ({exc}); "
                              f"rules for partitioned tables are skipped.")
            return {}, None

    def add_table_sizes(self, results, database):
        try:
            sizes = table_sizes(connections[database])
        except Exception as exc:  # no database in this CI job: sizes are optional
            self.stderr.write(f"--table-sizes: could not read table sizes from {database!r} ({exc}); "
                              f"findings are listed in migration order.")
            return
        for result in results:
            result.rows = sizes.get(result.finding.table)
