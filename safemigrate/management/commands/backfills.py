"""``manage.py backfills``: run and control background data migrations.

``run`` works through them (``safemigrate.pg.background_runner.run_pending``);
``list`` and ``status`` show them; ``pause``, ``resume``, ``retry``,
``cancel`` and ``finalize`` change them. Every action takes ``--json`` (the
schema is in docs/pages/background-migrations.md). Exit status: 0 done, 1 refused
or failed (the message says why and what to run), 2 an unknown name or a usage error.
"""

import json
import sys

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections

from safemigrate.conf import conf
from safemigrate.exceptions import BackgroundMigrationError
from safemigrate.pg import background_state as bg
from safemigrate.pg.background_gate import refusal
from safemigrate.pg.background_runner import finalize_inline, run_pending

SCHEMA_VERSION = 1
CONTROL = {"pause": bg.pause, "resume": bg.resume, "retry": bg.retry, "cancel": bg.cancel}


class Command(BaseCommand):
    help = "Run and control background data migrations (copies enqueued by expand migrations)."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

        def action(name, help_text, names="one"):
            sub = actions.add_parser(name, help=help_text, description=help_text)
            if names == "one":
                sub.add_argument("name", help="The background migration (see `backfills list`).")
            elif names == "many":
                sub.add_argument("names", nargs="+", metavar="name", help="The background migrations.")
            elif names == "optional":
                sub.add_argument("names", nargs="*", metavar="name", help="Only these (default: all).")
            sub.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default 'default').")
            sub.add_argument("--json", action="store_true", help="Print one JSON document (schema in the docs).")
            return sub

        run = action("run", "Work through every runnable background migration, then exit.", names="optional")
        run.add_argument("--forever", action="store_true",
                         help="Keep polling for new work instead of exiting (a worker container).")
        run.add_argument("--max-seconds", type=float, metavar="S",
                         help="Stop after S seconds; the migration in hand stays queued.")
        run.add_argument("--poll", type=float, default=5.0, metavar="S",
                         help="With --forever: seconds between looks for new work (default 5).")
        action("list", "List the background migrations with state, progress, rows/s, ETA.", names=None)
        action("status", "Show one background migration in full, with its last health readings.")
        action("pause", "Pause one: the runner stops within one batch.")
        action("resume", "Let a paused one run again.")
        action("retry", "Queue a failed or cancelled one again; it resumes after its last committed batch.")
        action("cancel", "Stop one for good (its contract step keeps refusing; retry queues it again).")
        finalize = action("finalize", "Finish the rest inline within a time budget and mark it finalized, "
                                      "or refuse naming what is left.", names="many")
        finalize.add_argument("--max-inline-seconds", type=float, metavar="S",
                              help="Run what is left inline for at most S seconds (default "
                                   "BACKGROUND_FINALIZE_INLINE_S; 0: only mark finished ones).")

    def handle(self, *args, **options):
        self.as_json = options["json"]
        connection = connections[options["database"]]
        try:
            return getattr(self, f"do_{options['action']}")(connection, options)
        except BackgroundMigrationError as exc:
            self.fail(str(exc), exc.exit_status)

    def fail(self, message, status):
        if self.as_json:
            self.emit({"error": {"message": message, "exit_status": status}})
            sys.exit(status)
        raise CommandError(message, returncode=status)

    def emit(self, document):
        self.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, **document}, indent=2, default=str))

    # -- actions -----------------------------------------------------------------------

    def do_run(self, connection, options):
        echo = (lambda line: None) if self.as_json or options["verbosity"] == 0 else self.stdout.write
        summary = run_pending(options["database"], names=options["names"] or None, forever=options["forever"],
                              max_seconds=options["max_seconds"], poll_s=options["poll"], echo=echo)
        failed = [{"name": name, "error": error} for name, error in summary.failed]
        if self.as_json:
            self.emit({"action": "run", "finished": summary.finished, "held": summary.held,
                       "stopped": summary.stopped, "failed": failed, "rows": summary.rows})
        elif options["verbosity"]:
            left = bg.all_rows(connection, (bg.PAUSED, bg.FAILED))
            self.stdout.write(f"Done: {len(summary.finished)} finished, {summary.rows:,} rows this run."
                              + (f" Not run: {', '.join(f'{r.name} ({r.state})' for r in left)}." if left else ""))
        if failed:
            if not self.as_json:
                self.stderr.write("\n".join(f"{f['name']}: {f['error'].split(chr(10) + chr(10))[0]}" for f in failed))
            sys.exit(1)

    def do_list(self, connection, options):
        rows = bg.all_rows(connection)
        if self.as_json:
            return self.emit({"background_migrations": [bg.snapshot(row) for row in rows]})
        if not rows:
            self.stdout.write("No background migrations.")
            return
        header = f"{'NAME':40} {'STATE':10} {'DONE':>6} {'ROWS/S':>9} {'DUTY':>5} {'ETA':>7}  THROTTLE"
        self.stdout.write(header)
        for row in rows:
            self.stdout.write(
                f"{row.name[:40]:40} {row.state:10} {row.progress_percent:5.1f}% {row.rows_per_second:9,.0f} "
                f"{row.duty_cycle:5.0%} {row.eta_text:>7}  {row.throttle_reason or '-'}")

    def do_status(self, connection, options):
        row = bg.get(connection, options["name"])
        if self.as_json:
            return self.emit({"background_migration": bg.snapshot(row)})
        self.print_status(row)

    def print_status(self, row):
        write = self.stdout.write
        write(f"{row.name}: {row.state}")
        write(f"  {row.description} (table {row.table_name}, fills {', '.join(row.columns) or '?'})")
        if row.migration:
            write(f"  enqueued by {row.app_label}.{row.migration}")
        write(f"  progress: {bg.describe_progress(row)}; {row.batches} batches, last of {row.batch_size} rows "
              f"in {row.last_batch_ms} ms; duty cycle {row.duty_cycle:.0%}; {row.retries} retries")
        if row.state == bg.ON_HOLD:
            write(f"  on hold until {row.hold_until:%Y-%m-%d %H:%M:%S %Z}: {row.hold_reason}")
        if row.throttle_reason:
            write(f"  last throttle: {row.throttle_reason}")
        if row.runner:
            write(f"  runner: {row.runner}")
        if row.error:
            write(f"  error: {row.error}")
        if row.health:
            write("  health (last reading, value / limit):")
            for name, reading in row.health.items():
                verdict = "STOP" if reading.get("stop") else "ok"
                write(f"    {name:16} {reading.get('value')!s:>12} / {reading.get('limit')!s:<12} {verdict:4} "
                      f"{reading.get('detail', '')}")

    def _control(self, connection, options):
        row = CONTROL[options["action"]](connection, options["name"], reason=f"{options['action']} by command")
        if self.as_json:
            return self.emit({"action": options["action"], "background_migration": bg.snapshot(row)})
        self.stdout.write(f"{row.name}: {row.state}")

    do_pause = do_resume = do_retry = do_cancel = _control

    def do_finalize(self, connection, options):
        budget = options["max_inline_seconds"]
        budget = conf.background_finalize_inline_s if budget is None else budget
        rows = [bg.get(connection, name) for name in options["names"]]  # unknown names fail before any work
        done, blocked = [], []
        for row in rows:
            if row.state not in bg.DONE:
                row = finalize_inline(connection, row.name, budget,
                                      echo=None if self.as_json else self.stdout.write)
            if row.state in bg.DONE:
                done.append(bg.mark_finalized(connection, row.name, reason="finalize by command") or row)
            else:
                blocked.append(row)
        if self.as_json:
            self.emit({"action": "finalize", "finalized": not blocked,
                       "background_migrations": [bg.snapshot(bg.get(connection, r.name)) for r in rows],
                       **({"error": {"message": refusal("backfills finalize", blocked, budget),
                                     "exit_status": 1}} if blocked else {})})
            if blocked:
                sys.exit(1)
            return
        for row in done:
            self.stdout.write(f"{row.name}: finalized")
        if blocked:
            raise CommandError(refusal("backfills finalize", blocked, budget), returncode=1)
