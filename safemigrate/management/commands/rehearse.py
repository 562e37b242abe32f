"""``manage.py rehearse``: the pending release, deployed, rolled back and redeployed on a copy, measured.

Parses and checks options, runs ``safemigrate.planning.rehearsal`` and prints
its report. Exit statuses: 0 passed, 1 a step failed or a check found a
difference, 2 bad input (options, a source it cannot read, a scratch
database it cannot make), 3 passed but over a budget. Nothing pending is
not a failure: it says so and exits 0.
"""

import json
import math

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections

from safemigrate.conf import conf
from safemigrate.management.commands.lint_migrations import files_added_since
from safemigrate.pg.sampling import BUCKETS
from safemigrate.pg.schema_dump import DumpFailed
from safemigrate.pg.scratch import ScratchError
from safemigrate.planning.rehearsal import SCHEMA_VERSION, Options, Rehearsal, RehearsalInputError
from safemigrate.planning.rehearsal_plan import NothingToRehearse, ReleaseError
from safemigrate.planning.rehearsal_report import USAGE, check_budgets, exit_status, render_text

MIN_PERCENT = 100.0 / BUCKETS


def _fail(message):
    return CommandError(message, returncode=USAGE)


class Command(BaseCommand):
    help = (
        "Rehearse the pending migrations on a scratch copy of a database (a template copy, a clone or a "
        "sample): expand, a short rollout, contract, the rollback and the release again, each statement "
        "measured and scaled to production size. Exits 1 when a step fails, 3 when over a budget."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="The source: the database whose pending migrations are rehearsed and whose "
                                 "table statistics give production size. Only read. Default: default.")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--sample", metavar="PERCENT",
                           help="Copy a consistent PERCENT %% sample of the source (rows by primary-key hash, "
                                "foreign keys closed) into a scratch database, e.g. --sample 1.")
        where.add_argument("--from-template", metavar="DB",
                           help="Copy database DB (on the source's server) with CREATE DATABASE ... TEMPLATE; "
                                "needs no other session connected to DB.")
        where.add_argument("--clone", action="store_true",
                           help="Make the scratch database with SAFEMIGRATE['REHEARSE_CLONE_COMMAND'].")
        parser.add_argument("--seed", type=int, default=0, help="With --sample: the hash seed (default 0).")
        parser.add_argument("--since", metavar="REF",
                            help="Rehearse the migration files added in git since REF instead of every pending one.")
        parser.add_argument("--rollout", type=int, default=10, metavar="ROWS",
                            help="Rows the old and the new code each write per changed model between expand "
                                 "and contract (default 10; 0 skips the rollout).")
        parser.add_argument("--rollback-from", choices=["auto", "contract", "expand", "none"], default="auto",
                            help="Where the rollback starts: after contract, after expand, or not at all. auto "
                                 "(default): after contract when the release can be reversed from there.")
        parser.add_argument("--keep", action="store_true", help="Keep the scratch database (to inspect it).")
        parser.add_argument("--format", choices=["text", "json"], default="text", help="Report format.")
        parser.add_argument("--report-json", metavar="PATH", help="Also write the JSON report to PATH.")
        parser.add_argument("--lock-sample-ms", type=float, default=5.0, metavar="MS",
                            help="How often the lock sampler reads pg_locks (default 5 ms).")
        parser.add_argument("--scratch-database", metavar="ALIAS",
                            help="With --sample: create the scratch database on this alias's server instead of "
                                 "the source's (e.g. when the source is a read replica).")

    def handle(self, *args, **options):
        rehearse_options = self._options(options)
        rehearsal = Rehearsal(rehearse_options)
        try:
            result = rehearsal.run()
        except NothingToRehearse as exc:
            self._nothing(str(exc), options)
            return
        except (RehearsalInputError, ReleaseError, ScratchError, DumpFailed) as exc:
            raise _fail(str(exc)) from None
        check_budgets(result)
        status = exit_status(result)
        result["exit_status"] = status
        if options["report_json"]:
            with open(options["report_json"], "w") as handle:
                json.dump(result, handle, indent=2, default=str)
        if options["format"] == "json":
            self.stdout.write(json.dumps(result, indent=2, default=str))
        else:
            render_text(result, self.stdout.write)
        if status:
            raise SystemExit(status)

    def _nothing(self, message, options):
        if options["format"] == "json":
            self.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "ok": True, "nothing_to_rehearse": message,
                                          "exit_status": 0}))
        else:
            self.stdout.write(message)

    def _options(self, options):
        database = options["database"]
        if database not in connections:
            raise _fail(f"--database {database}: no such alias in settings.DATABASES.")
        if connections[database].vendor != "postgresql":
            raise _fail(f"--database {database} is not PostgreSQL; rehearse runs on PostgreSQL only.")
        mode = "sample" if options["sample"] is not None else "template" if options["from_template"] else \
            "clone" if options["clone"] else None
        if mode is None:
            raise _fail("Say where to rehearse: --sample PERCENT (a sample of the source copied into a scratch "
                        "database), --from-template DB (a copy of a database nobody is connected to) or --clone "
                        "(SAFEMIGRATE['REHEARSE_CLONE_COMMAND']).")
        percent = None
        if mode == "sample":
            percent = self._percent(options["sample"])
        if mode == "clone" and not conf.rehearse_clone_command:
            raise _fail("--clone needs SAFEMIGRATE['REHEARSE_CLONE_COMMAND']: the command (a list of arguments) "
                        "that makes a clone and prints its postgresql:// URL on its last line.")
        scratch_alias = options["scratch_database"]
        if scratch_alias is not None:
            if scratch_alias not in connections:
                raise _fail(f"--scratch-database {scratch_alias}: no such alias in settings.DATABASES.")
            if mode != "sample":
                raise _fail("--scratch-database goes with --sample only: a template is copied on its own server, "
                            "and a clone lives where the clone command puts it.")
        if options["rollout"] < 0:
            raise _fail(f"--rollout {options['rollout']}: give a number of rows >= 0 (0 skips the rollout).")
        if not options["lock_sample_ms"] > 0:
            raise _fail("--lock-sample-ms must be a positive number of milliseconds.")
        since_files = files_added_since(options["since"]) if options["since"] else None
        echo = self.stderr.write if options["verbosity"] >= 1 else None
        return Options(database=database, mode=mode, template=options["from_template"], percent=percent,
                       seed=options["seed"], since_ref=options["since"], since_files=since_files,
                       keep=options["keep"], rollout_rows=options["rollout"], rollback_from=options["rollback_from"],
                       lock_sample_ms=options["lock_sample_ms"], scratch_database=scratch_alias, echo=echo)

    @staticmethod
    def _percent(text):
        try:
            value = float(str(text).rstrip("%").strip())
        except ValueError:
            value = math.nan
        if not (MIN_PERCENT <= value <= 100):
            raise _fail(f"--sample {text}: give a percentage between {MIN_PERCENT:.5f} and 100 (for example "
                        f"--sample 1 copies about 1 % of each large table; --sample 100 copies everything).")
        return value
