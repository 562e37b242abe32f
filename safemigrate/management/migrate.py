"""Behaviour of the ``migrate`` and ``migrate_contract`` commands.

The deploy sequence::

    python manage.py makemigrations --safe   # risky changes -> expand + contract migrations
    python manage.py migrate                 # before the deploy: expand only, contract held back
    <roll out the new code>                  # old and new code share the expanded schema
    python manage.py migrate_contract        # after the rollout: the held-back contract steps
    python manage.py migrate_contract --check  # exits 1 while contract work is pending

Everything lives in mixins over Django's own ``migrate`` command, so a
project that already uses another package's ``migrate`` subclass can combine
them (``class Command(StagedMigrateMixin, OtherPackageMigrate)``).

How the plan is trimmed: Django's ``migrate.handle`` builds a
``MigrationExecutor`` and asks it for ``migration_plan(targets)``. For the
duration of ``handle`` the executor class seen by Django's command module is
a subclass whose ``migration_plan`` drops the held-back contract migrations
from plans requested without ``clean_start`` (``executor.migrate`` asks for
its internal full plan with ``clean_start=True``, which stays untouched so
project states are computed correctly). This reuses all of Django's option
handling — targets, ``--fake``, ``--plan``, ``--check``, backwards
migrations — instead of copying it.
"""

import contextlib
import json
import sys
import threading

from django.core.management.base import CommandError
from django.core.management.commands import migrate as django_migrate
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from ..exceptions import StageOrderError
from ..pg.archive import finish_pending
from ..pg.runlock import run_lock
from ..pg import windows
from ..pg.execution import BoundedExecutorMixin, annotate_plan
from ..pg.reporting import Report, collecting
from ..planning import gate, preflight, rules
from ..planning import plan_json
from ..planning.releases import refuse_blocked
from ..stages import Stage, creating_test_database, migration_stage, operation_stage, split_plan

_swap_lock = threading.RLock()

#: Returned by ``before_handle`` when the command's work is done without
#: Django's ``handle`` (``migrate_contract --check`` / ``--plan --annotate``).
#: Commands return from ``call_command`` like Django's do; only
#: ``--check`` with pending work exits, with status 1 as Django's does.
FINISHED = object()


def held_summary(held):
    lines = [f"  {migration.app_label}.{migration.name} ({migration_stage(migration)})" for migration, _ in held]
    return lines


@contextlib.contextmanager
def executor_class_in_django_migrate(executor_class):
    """Let Django's migrate command build ``executor_class`` while inside."""
    with _swap_lock:
        original = django_migrate.MigrationExecutor
        django_migrate.MigrationExecutor = executor_class
        try:
            yield
        finally:
            django_migrate.MigrationExecutor = original


def _trimming_executor(command):
    # BoundedExecutorMixin (issue 10): every statement of every migration is lock-bounded.
    class StagedExecutor(BoundedExecutorMixin, MigrationExecutor):
        def migration_plan(self, targets, clean_start=False):
            plan = super().migration_plan(targets, clean_start=clean_start)
            if clean_start:
                return plan
            planned = command.filter_plan(plan, self.loader.graph)
            command.planned = (self.loader, planned)
            if getattr(command, "annotate", False):
                command.locks = rules.plan_locks(self.loader, planned)
            return planned

        def migrate(self, targets, plan=None, state=None, fake=False, fake_initial=False):
            if plan and not fake:  # hook: safemigrate.planning.preflight (issue 24)
                preflight.check(plan, self.loader, self.connection, state,
                                command="migrate" if command.hold_contract else "migrate_contract")
            return super().migrate(targets, plan=plan, state=state, fake=fake, fake_initial=fake_initial)

    return StagedExecutor


class StagedMigrateMixin:
    """``migrate`` that applies the expand stage only (before the deploy)."""

    #: True: hold contract migrations back (``migrate``); False: apply them.
    hold_contract = True

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--annotate", action="store_true",
            help="With --plan: add each operation's deploy stage and the strongest lock it takes. "
                 "Without it --plan prints exactly what Django's migrate prints.",
        )
        parser.add_argument(
            "--report-json", metavar="PATH",
            help="Write what each step did (duration, lock retries, rows) and what was held back, as JSON.",
        )
        parser.add_argument(  # hook: safemigrate.planning.plan_json
            "--json", action="store_true",
            help="With --plan or --check: print the plan as JSON (docs/pages/plan-json.md) instead of running it.",
        )
        if self.hold_contract:
            parser.add_argument(
                "--all-stages", action="store_true",
                help="Apply contract migrations too (local development; never during a rolling deploy).",
            )

    def filter_plan(self, plan, graph):
        runnable, held = split_plan(plan, graph)
        if not self.holding:
            return plan
        refuse_blocked(held, graph)  # hook: safemigrate.planning.releases
        self.held = held
        return runnable

    def describe_operation(self, operation, backwards):
        message, is_error = super().describe_operation(operation, backwards)
        if not getattr(self, "annotate", False):
            return message, is_error
        return f"{message}  [{operation_stage(operation)}; lock: {self.lock_of(operation)}]", is_error

    def lock_of(self, operation):
        """The lock ``operation`` takes, read with the migration state it runs in (``planning.rules``)."""
        return getattr(self, "locks", {}).get(id(operation)) or rules.lock_for(operation)

    def handle(self, *args, **options):
        if options.get("json"):  # hook: safemigrate.planning.plan_json
            return plan_json.emit(self, options)
        if options.get("annotate") and not options.get("plan"):
            name = "migrate" if self.hold_contract else "migrate_contract"
            raise CommandError(
                "--annotate only changes the output of --plan, and without --plan this command would "
                "apply migrations rather than show them. Run `python manage.py "
                f"{name} --plan --annotate` to see stages and locks without applying anything."
            )
        self.annotate = bool(options.get("annotate"))
        self.held = []
        self.holding = self.hold_contract and not options.get("all_stages") and not creating_test_database()
        connection = connections[options["database"]]
        report = Report(echo=self._echo_step, warn=self.stderr.write, verbosity=options["verbosity"])
        self._dangling = False
        if self.before_handle(connection, options) is FINISHED:
            return None
        echo = self.stderr.write if options["verbosity"] >= 1 else None
        read_only = bool(options.get("plan") or options.get("check_unapplied"))
        command = "migrate" if self.hold_contract else "migrate_contract"
        with run_lock(connection, echo=echo, read_only=read_only, command=command), collecting(report):
            if not read_only:
                finish_pending(connection)  # hook: archives a killed earlier run left unfinished
            with executor_class_in_django_migrate(_trimming_executor(self)):
                result = super().handle(*args, **options)
            gate.record_release(connection, options)  # hook: safemigrate.planning.gate
        self.after_handle(report, options)
        return result

    def before_handle(self, connection, options):
        """Hook run before Django's ``handle``; return ``FINISHED`` to skip it."""
        return None

    def migration_progress_callback(self, action, migration=None, fake=False):
        super().migration_progress_callback(action, migration, fake)
        # Django leaves "Applying x..." open for " OK"; step lines start below it.
        self._dangling = action in ("apply_start", "unapply_start") and self.verbosity >= 1

    def _echo_step(self, line):
        if getattr(self, "_dangling", False):
            self.stdout.write("")
            self._dangling = False
        self.stdout.write(line)

    def after_handle(self, report, options):
        if self.held and options["verbosity"] >= 1 and not options.get("check_unapplied"):
            self.stdout.write(self.style.WARNING(
                f"Held back {len(self.held)} contract migration(s); they are safe only once no old code runs:"
            ))
            for line in held_summary(self.held):
                self.stdout.write(line)
            self.stdout.write("  Deploy the new code, then run: python manage.py migrate_contract")
        if options.get("plan") and getattr(self, "annotate", False) and getattr(self, "planned", None):
            loader, plan = self.planned
            if plan:
                self.stdout.write("Statements, the lock each takes, and how it runs:", self.style.MIGRATE_LABEL)
                for line in annotate_plan(loader, plan):
                    self.stdout.write(line)
        if options.get("report_json"):
            payload = {
                "steps": [vars(step) for step in report.steps],
                "held_back": [f"{m.app_label}.{m.name}" for m, _ in self.held],
            }
            with open(options["report_json"], "w") as handle:
                json.dump(payload, handle, indent=2, default=str)


class ContractMixin(StagedMigrateMixin):
    """``migrate_contract``: apply the held-back contract migrations (after the deploy)."""

    hold_contract = False

    def add_arguments(self, parser):
        super().add_arguments(parser)
        for action in parser._actions:
            if action.dest == "check_unapplied":
                action.help = "Exit with a non-zero status while contract migrations are pending."
        parser.add_argument(  # hook: safemigrate.planning.gate
            "--force", action="store_true",
            help="Run even though the contract gate is closed (old code connected, or a contract delay not over).",
        )

    def pending_plan(self, connection, options):
        executor = MigrationExecutor(connection)
        graph = executor.loader.graph
        app_label, name = options.get("app_label"), options.get("migration_name")
        if app_label and name:
            try:
                migration = executor.loader.get_migration_by_prefix(app_label, name)
            except (KeyError, Exception) as exc:
                raise CommandError(str(exc)) from exc
            targets = [(app_label, migration.name)]
        elif app_label:
            targets = [key for key in graph.leaf_nodes() if key[0] == app_label]
            if not targets:
                raise CommandError(f"App '{app_label}' does not have migrations.")
        else:
            targets = graph.leaf_nodes()
        return executor, executor.migration_plan(targets)

    def before_handle(self, connection, options):
        executor, plan = self.pending_plan(connection, options)
        forwards = [(m, b) for m, b in plan if not b]
        contract = [m for m, _ in forwards if migration_stage(m) is Stage.CONTRACT]
        if options.get("check_unapplied"):
            if contract:
                self.stdout.write(f"{len(contract)} contract migration(s) pending:")
                for migration in contract:
                    self.stdout.write(f"  {migration.app_label}.{migration.name}")
                sys.exit(1)
            self.stdout.write("No contract migrations pending.")
            return FINISHED
        runnable, held = split_plan(forwards, executor.loader.graph)
        if held and runnable:
            graph = executor.loader.graph
            ancestors = set()
            for migration, _ in held:
                ancestors.update(graph.forwards_plan((migration.app_label, migration.name)))
            missing = [m for m, _ in runnable if (m.app_label, m.name) in ancestors]
            if missing:
                names = ", ".join(f"{m.app_label}.{m.name}" for m in missing)
                raise StageOrderError(
                    f"Refusing to run contract migrations: the expand migrations they build on are not "
                    f"applied yet ({names}). Contract steps drop what the old code still uses, so they "
                    f"must come after the expand steps and the deploy. Run `python manage.py migrate` "
                    f"first (before deploying the new code), then `python manage.py migrate_contract`."
                )
        self.gate = gate.check_before_contract(self, connection, executor, forwards, options)  # hook: gate
        if options.get("plan") and options.get("annotate"):
            self.print_plan(executor, forwards)
            return FINISHED
        # A plain --plan goes on to Django's, which prints the (untrimmed) plan.
        return None

    def print_plan(self, executor, plan):
        self.stdout.write("Planned contract run:", self.style.MIGRATE_LABEL)
        tracker = windows.PlanTracker(executor.connection)  # issue 23: rename windows
        if not plan:
            self.stdout.write("  No planned migration operations.")
        for migration, _ in plan:
            self.stdout.write(
                f"{migration.app_label}.{migration.name}  [{migration_stage(migration)}]",
                self.style.MIGRATE_HEADING,
            )
            for operation, state in rules.operation_states(executor.loader, migration):
                lock = rules.lock_for(operation, state, migration.app_label)
                self.stdout.write(f"    {operation.describe()}  [{operation_stage(operation)}; lock: {lock}]")
            for statement in executor.loader.collect_sql([(migration, False)]):
                note = tracker.note(statement)
                self.stdout.write(f"      {statement}" + (f"  [{note}]" if note else ""))
        for line in gate.plan_lines(self.gate):  # hook: safemigrate.planning.gate
            self.stdout.write(line)
