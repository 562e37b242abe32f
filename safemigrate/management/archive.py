"""``manage.py archive``: list, show, restore and purge what contract steps archived.

The work is in ``safemigrate.pg.archive_*``; this module parses, runs the
changing subcommands under the run lock (so a restore or purge never
interleaves with a migrate run), and prints text or JSON (the JSON shapes
are in docs/pages/archive.md, checked by tests/test_archive_command.py).
"""

import json
import re

from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, connections

from ..conf import conf
from ..exceptions import SafeMigrateError
from ..pg import archive_store as store
from ..pg.archive_finish import finish_all
from ..pg.archive_purge import due, purge
from ..pg.archive_restore import restore
from ..pg.runlock import run_lock
from ..pg.reporting import Report, collecting

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm]?)\s*$")
UNITS = {"d": 1.0, "": 1.0, "h": 1 / 24, "m": 1 / 1440}


def days(text):
    """``14d`` / ``12h`` / ``30m`` / ``14`` (days) as a number of days."""
    match = DURATION.match(text)
    if not match:
        raise CommandError(f"--older-than {text!r}: give a duration such as 14d, 12h or 30m.")
    return float(match.group(1)) * UNITS[match.group(2)]


def size_text(size):
    if size is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def location(connection, archive):
    """Where the archived values are now."""
    if archive.state in (store.RESTORED, store.PURGED):
        return None
    if archive.state == store.RESTORING:  # a table already moved back, its foreign keys not yet
        return f"{archive.table_schema}.{archive.table_name}"
    if archive.mode == "table":
        return f"{store.schema_name()}.{archive.archive_name}"
    if archive.mode == "copy" and archive.state == store.ARCHIVED:
        return f"{store.schema_name()}.{archive.copy_table}"
    return f"{archive.table_name}.{archive.archive_name}"


def _time(value):
    return value.isoformat() if value else None


def as_json(connection, archive, detail=False):
    document = {
        "id": archive.id, "state": archive.state, "kind": archive.kind, "reason": archive.reason,
        "mode": archive.mode, "app": archive.app_label, "migration": archive.migration,
        "table": archive.table_name, "column": archive.column_name, "location": location(connection, archive),
        "rows": archive.row_count, "checksum": archive.checksum, "bytes": store.size_of(connection, archive),
        "archived_at": _time(archive.archived_at), "restored_at": _time(archive.restored_at),
        "purged_at": _time(archive.purged_at), "note": archive.note,
    }
    if detail:
        document["ddl"] = archive.ddl
        document["definition"] = archive.definition
    return document


class ArchiveCommandMixin:
    help = ("List, show, restore and purge the columns and tables contract steps archived instead of dropping "
            "(docs/pages/archive.md).")

    def add_arguments(self, parser):
        subcommands = parser.add_subparsers(dest="action", required=True, metavar="list|show|restore|purge")

        def add(name, help_text):
            sub = subcommands.add_parser(name, help=help_text, description=help_text)
            sub.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database to use (default: default).")
            sub.add_argument("--json", action="store_true", help="Print JSON (docs/pages/archive.md) instead of text.")
            return sub

        listing = add("list", "Archives with their state, size and location.")
        listing.add_argument("--all", action="store_true", help="Also list restored and purged archives.")
        show = add("show", "One archive: where it is, its checksum and the DDL that re-creates it.")
        show.add_argument("id", type=int)
        restoring = add("restore", "Put archived values or tables back (after reversing the contract migration, "
                                   "or on its own for a table).")
        restoring.add_argument("ids", type=int, nargs="+", metavar="ID")
        restoring.add_argument("--allow-changed", action="store_true",
                               help="Restore even though the archive's checksum changed (rows deleted since).")
        purging = add("purge", "Drop archives for good: the given ids, or those older than --older-than "
                               "(default ARCHIVE_KEEP_DAYS).")
        purging.add_argument("ids", type=int, nargs="*", metavar="ID")
        purging.add_argument("--older-than", metavar="AGE", help="Purge archives older than this (14d, 12h, 30m).")
        purging.add_argument("--dry-run", action="store_true", help="Show what would be purged; change nothing.")

    def handle(self, *args, **options):
        connection = connections[options["database"]]
        self.as_json = options["json"]
        report = Report(echo=None if self.as_json else self.stdout.write, warn=self.stderr.write,
                        verbosity=options["verbosity"])
        action = options["action"]
        try:
            with collecting(report):
                if action == "list":
                    return self.list(connection, options)
                if action == "show":
                    return self.show(connection, options["id"])
                read_only = action == "purge" and options["dry_run"]
                echo = self.stderr.write if options["verbosity"] >= 1 else None
                with run_lock(connection, echo=echo, read_only=read_only, command="archive"):
                    if not read_only:
                        finish_all(connection)
                    if action == "restore":
                        return self.restore(connection, options)
                    return self.purge(connection, options)
        except SafeMigrateError as exc:
            raise CommandError(str(exc)) from exc

    def emit(self, document):
        self.stdout.write(json.dumps(document, indent=2, default=str))

    def _get(self, connection, archive_id):
        archive = store.get(connection, archive_id)
        if archive is None:
            known = [a.id for a in store.select(connection)]
            raise CommandError(f"No archive with id {archive_id} (known ids: {', '.join(map(str, known)) or 'none'}). "
                               f"Nothing was changed; `manage.py archive list --all` lists them.")
        return archive

    def list(self, connection, options):
        archives = store.select(connection, "true" if options["all"] else "state = ANY(%s)",
                                [] if options["all"] else [list(store.LIVE_STATES)])
        if self.as_json:
            return self.emit([as_json(connection, archive) for archive in archives])
        if not archives:
            self.stdout.write("No archives." if options["all"] else "No archives (restored and purged ones: --all).")
            return
        rows = [("ID", "STATE", "REASON", "WHAT", "BY", "ARCHIVED", "VALUES", "SIZE", "WHERE")]
        for archive in archives:
            rows.append((str(archive.id), archive.state, archive.reason, archive.target, archive.label,
                         f"{archive.archived_at:%Y-%m-%d %H:%M}",
                         "-" if archive.row_count is None else f"{archive.row_count:,}",
                         size_text(store.size_of(connection, archive)), location(connection, archive) or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        live = [a for a in archives if a.state in store.LIVE_STATES]
        total = sum(store.size_of(connection, a) or 0 for a in live)
        self.stdout.write(f"{len(live)} archive(s) kept, {size_text(total)} in all.")

    def show(self, connection, archive_id):
        archive = self._get(connection, archive_id)
        document = as_json(connection, archive, detail=True)
        if self.as_json:
            return self.emit(document)
        for key in ("id", "state", "reason", "mode", "app", "migration", "table", "column", "location", "rows",
                    "checksum", "archived_at", "restored_at", "purged_at", "note"):
            if document[key] not in (None, ""):
                self.stdout.write(f"{key}: {document[key]}")
        self.stdout.write(f"size: {size_text(document['bytes'])}")
        self.stdout.write("DDL to re-create it:")
        for line in archive.ddl.splitlines():
            self.stdout.write(f"  {line}")

    def restore(self, connection, options):
        results = []
        for archive in [self._get(connection, archive_id) for archive_id in options["ids"]]:
            result = restore(connection, store.get(connection, archive.id), allow_changed=options["allow_changed"])
            results.append(result)
            if not self.as_json:
                self.stdout.write(f"archive {result.id} ({result.target}): {result.action}: {result.summary()}")
                for note in result.notes:
                    self.stdout.write(self.style.WARNING(f"  note: {note}"))
        if self.as_json:
            self.emit([result.as_json() for result in results])

    def purge(self, connection, options):
        if options["ids"] and options["older_than"]:
            raise CommandError("Give archive ids or --older-than, not both.")
        if options["ids"]:
            archives = [self._get(connection, archive_id) for archive_id in options["ids"]]
        else:
            keep = days(options["older_than"]) if options["older_than"] else conf.archive_keep_days
            if keep is None:
                raise CommandError("ARCHIVE_KEEP_DAYS is None (keep archives until purged by id): give archive "
                                   "ids or --older-than.")
            archives = due(connection, keep)
        results = [purge(connection, archive, dry_run=options["dry_run"]) for archive in archives]
        if self.as_json:
            return self.emit([result.as_json() for result in results])
        if not results:
            self.stdout.write("Nothing to purge.")
        for result in results:
            self.stdout.write(f"archive {result.id} ({result.target}): {result.action}"
                              + (f", {size_text(result.bytes)}" if result.bytes else ""))
