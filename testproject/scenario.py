"""A deploy rehearsed under live traffic: the engine of the demo and of the
end-to-end zero-downtime tests.

A scenario describes one model change as two versions of an app's
``models.py`` (the old code and the new code) and what each version's
traffic writes. ``Scenario.run()`` then does what a team does on deploy day,
for real, against a fresh database on the PostgreSQL server:

1. old code only: ``makemigrations`` + ``migrate`` the first version, fill
   the table;
2. ``makemigrations --safe`` for the new version, then ``migrate`` while the
   old code's traffic runs (its own process) and a blocker keeps taking
   ACCESS SHARE on the table for over a second at a time, as long reports do;
3. the rollout: old and new code traffic side by side;
4. ``migrate_contract`` under the new code's traffic only;
5. ``makemigrations --check`` must be clean, and every row either version
   wrote must be in the final schema with the values it wrote.

With ``safe=False`` the same change goes through plain Django
(``makemigrations`` + ``migrate``, safemigrate not installed), for contrast.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from testproject.partitioned import snapshot as partition_snapshot
from testproject.pgserver import database_settings, database_url
from testproject.profiles import PROFILES, ProfileDatabase

REPO = Path(__file__).resolve().parent.parent
APP = "zdtapp"
#: An expected value meaning "any value but NULL" (per-row defaults).
NOT_NULL = "<not null>"


@dataclass
class Version:
    """One code version: its models.py and what its traffic writes."""

    models: str
    create: dict
    update: dict
    read: list = field(default_factory=list)


@dataclass
class ScenarioSpec:
    name: str
    old: Version
    new: Version
    #: ``INSERT`` filling the table, formatted with ``table`` and ``rows``.
    fill_sql: str
    #: final column -> Python expression of ``v`` (values old code wrote) giving its final value.
    expect_old: dict
    #: final column -> expression of ``v`` (values new code wrote).
    expect_new: dict
    #: SQL queries (formatted with ``table``) that must return true on the final schema.
    final_checks: list = field(default_factory=list)
    table: str = f"{APP}_item"
    #: The table after contract, when the change renames it (Meta.db_table).
    final_table: str = None
    model: str = "Item"
    #: Answers to makemigrations' questions (renames), fed on stdin.
    answers: str = "y\ny\ny\ny\n"
    #: Extra ``SAFEMIGRATE`` settings of both code versions (e.g. ``{"RENAME_STRATEGY": "copy"}``).
    settings: dict = field(default_factory=dict)
    #: Source of the old code's 0001_initial.py (formatted with ``table`` and ``rows``), when
    #: ``makemigrations`` cannot write it: a partitioned table is created with RunSQL.
    initial_migration: "str | None" = None
    #: SQL (formatted with ``table``) another session runs 1 s into ``migrate``: a partition created
    #: while the migration runs.
    during_migrate: list = field(default_factory=list)


@dataclass
class TrafficSummary:
    version: str
    phase: str
    calls: int
    errors: list
    latencies: list
    created: list
    updated: dict

    @property
    def worst(self):
        return max(self.latencies, default=0.0)

    def percentile(self, pct):
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]

    def slow(self, bound):
        return [lat for lat in self.latencies if lat > bound]

    def line(self):
        return (f"{self.version} code ({self.phase}): {self.calls} requests, {len(self.errors)} errors, "
                f"p99 {self.percentile(99) * 1000:.0f} ms, worst wait {self.worst * 1000:.0f} ms")


@dataclass
class ScenarioResult:
    name: str
    safe: bool
    steps: list = field(default_factory=list)  # (title, seconds, returncode)
    report_steps: list = field(default_factory=list)  # step records from --report-json
    traffic: list = field(default_factory=list)
    blocker_holds: int = 0
    checked_rows: int = 0
    missing: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)
    check_clean: bool = None
    failed_checks: list = field(default_factory=list)
    migration_files: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    #: (schema, owner) of the scenario's table at the end.
    table_home: tuple = None
    #: ``testproject.partitioned.snapshot`` of a hand-made table at the end (to compare with plain Django's).
    catalog: list = None

    @property
    def errors(self):
        return [error for summary in self.traffic for error in summary.errors]

    @property
    def worst(self):
        return max((summary.worst for summary in self.traffic), default=0.0)


class Blocker(threading.Thread):
    """Hold ACCESS SHARE on a table for ``hold`` seconds, over and over."""

    def __init__(self, dsn, table, hold=1.2, gap=0.05, final_table=None):
        super().__init__(daemon=True)
        self.dsn, self.table, self.hold, self.gap = dsn, table, hold, gap
        #: The table's name once the old one is gone (a Meta.db_table change's contract).
        self.final_table = final_table
        self.holds = 0
        self.stopping = threading.Event()

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                with conn.transaction():
                    table = self.table
                    if self.final_table and conn.execute("SELECT to_regclass(%s)", [f'"{table}"']).fetchone()[0] is None:
                        table = self.final_table
                    conn.execute(f'SELECT count(*) FROM (SELECT 1 FROM "{table}" LIMIT 1) s')
                    self.stopping.wait(self.hold)
                self.holds += 1
                self.stopping.wait(self.gap)

    def stop(self):
        self.stopping.set()
        self.join(30)


class Scenario:
    def __init__(self, spec, rows=100_000, safe=True, echo=print, lock_timeout_ms=200,
                 rollout_seconds=1.0, blocker_hold=1.2, threads=2, keep=False, profile="superuser"):
        self.spec = spec
        #: testproject.profiles: who runs the migrations, who serves traffic, in which schema.
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        self.rows = rows
        self.safe = safe
        self.echo = echo or (lambda *a: None)
        self.lock_timeout_ms = lock_timeout_ms
        self.rollout_seconds = rollout_seconds
        self.blocker_hold = blocker_hold
        self.threads = threads
        self.keep = keep
        self.result = ScenarioResult(spec.name, safe)
        self.id = uuid.uuid4().hex[:8]
        self.dbname = f"zdt_{spec.name}_{self.id}"[:60]
        self.database = ProfileDatabase(self.profile, name=self.dbname)

    # -- plumbing ------------------------------------------------------------

    def _server_dsn(self, dbname):
        settings = database_settings(database_url())
        parts = {"dbname": dbname, "user": settings["USER"] or "postgres", "host": settings["HOST"]}
        if settings["PORT"]:
            parts["port"] = settings["PORT"]
        if settings["PASSWORD"]:
            parts["password"] = settings["PASSWORD"]
        return " ".join(f"{key}='{value}'" for key, value in parts.items())

    def _database_url(self, role="owner"):
        """The URL ``manage.py`` (the owner role) or the traffic (the app role) connects with."""
        if self.profile.two_roles:
            return self.database.url(role)
        parts = urlsplit(database_url())
        return urlunsplit(parts._replace(path=f"/{self.dbname}"))

    def _write_tree(self):
        self.root = Path(tempfile.mkdtemp(prefix=f"zdt-{self.spec.name}-"))
        (self.root / "zdt_migrations").mkdir()
        (self.root / "zdt_migrations" / "__init__.py").write_text("")
        apps = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger"]
        if self.safe:
            apps.append("safemigrate")
        apps.append(APP)
        for version in ("old", "new"):
            code = self.root / version
            (code / APP).mkdir(parents=True)
            (code / APP / "__init__.py").write_text("")
            source = getattr(self.spec, version).models
            (code / APP / "models.py").write_text(textwrap.dedent(source))
            (code / "zdt_settings.py").write_text(textwrap.dedent(f"""
                from testproject.settings import *  # noqa: F401,F403
                INSTALLED_APPS = {apps!r}
                MIGRATION_MODULES = {{"{APP}": "zdt_migrations"}}
                SAFEMIGRATE = {{"LOCK_TIMEOUT_MS": {self.lock_timeout_ms}, "LOCK_RETRIES": 100,
                               "RETRY_BACKOFF_MAX_MS": 400, **{self.spec.settings!r}}}
            """))
            if self.profile.schema:  # docs/pages/roles.md: pgtrigger's helper function in the app's schema
                with (code / "zdt_settings.py").open("a") as handle:
                    handle.write(f"PGTRIGGER_SCHEMA = {self.profile.schema!r}\n")

    def _env(self, version, role="owner"):
        return dict(
            os.environ,
            DATABASE_URL=self._database_url(role),
            DJANGO_SETTINGS_MODULE="zdt_settings",
            PYTHONPATH=os.pathsep.join([str(self.root / version), str(self.root), str(REPO)]),
        )

    def manage(self, title, *args, version="new", stdin=None, check=True, live=False):
        """Run ``manage.py`` in a subprocess; ``live`` echoes its step and progress lines as they come."""
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "django", *args], cwd=self.root, env=self._env(version),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        if stdin:
            process.stdin.write(stdin)
        process.stdin.close()
        lines = []
        for line in process.stdout:
            lines.append(line)
            if live and line.startswith("    "):
                self.echo("    | " + line.strip())
        process.wait(timeout=600)
        seconds = time.monotonic() - started
        self.result.steps.append((title, seconds, process.returncode))
        self.echo(f"  {title}: {seconds:.1f}s" + ("" if process.returncode == 0 else f" (exit {process.returncode})"))
        output = "".join(lines)
        process.output = output
        if process.returncode != 0 and title != "makemigrations --check":
            self.result.failures.append(f"{title} exited {process.returncode}:\n{output[-3000:]}")
        if check and process.returncode != 0:
            raise ScenarioError(f"{title} failed (exit {process.returncode}):\n{output}")
        return process

    def _start_traffic(self, version, phase):
        spec = getattr(self.spec, version)
        directory = self.root / f"traffic_{version}_{phase}"
        directory.mkdir()
        worker_spec = {
            "version": version, "app_label": APP, "model": self.spec.model, "threads": self.threads,
            "create": spec.create, "update": spec.update, "read": spec.read,
            # A fresh id range per traffic process, so unique values never collide.
            "id_base": 10_000_000 * (len(list(self.root.glob("traffic_*")))),
            # Rows that exist (the fill), one range per version so updates never race.
            "update_range": self._update_range(version),
        }
        (directory / "spec.json").write_text(json.dumps(worker_spec))
        stop = directory / "stop"
        out = directory / "result.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "testproject.traffic_worker", str(directory / "spec.json"), str(out), str(stop)],
            cwd=self.root, env=self._env(version, role="app"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not Path(str(out) + ".started").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ScenarioError(f"{version} code traffic did not start:\n{process.stdout.read()}")
            time.sleep(0.05)
        return process, stop, out, version, phase

    def _update_range(self, version):
        half = self.rows // 2
        if version == "old":
            return [1, min(2000, half)]
        return [min(5001, half + 1), min(7000, self.rows)]

    def _stop_traffic(self, handle):
        process, stop, out, version, phase = handle
        stop.touch()
        output, _ = process.communicate(timeout=60)
        if not out.exists():
            raise ScenarioError(f"{version} code traffic crashed:\n{output}")
        data = json.loads(out.read_text())
        summary = TrafficSummary(version, phase, data["calls"], data["errors"], data["latencies"],
                                 data["created"], data["updated"])
        self.result.traffic.append(summary)
        self.echo(f"  {summary.line()}")
        return summary

    def _meanwhile(self, dsn, statements, delay=1.0):
        """Run ``statements`` in another session ``delay`` seconds from now (during ``migrate``)."""
        if not statements:
            return None

        def run():
            time.sleep(delay)
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for statement in statements:
                        conn.execute(statement.format(table=self.spec.table))
                        self.echo(f"  meanwhile: {statement.format(table=self.spec.table)}")
            except psycopg.Error as exc:
                self.result.failures.append(f"statement run during migrate failed: {exc}")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _read_report(self, path):
        if path.exists():
            self.result.report_steps.extend(json.loads(path.read_text())["steps"])

    # -- the run -------------------------------------------------------------

    def run(self):
        self.database.create()
        self._write_tree()
        blocker = None
        running = []
        try:
            self.echo(f"[{self.spec.name}] {'safemigrate' if self.safe else 'plain Django'}, {self.rows:,} rows")
            if self.spec.initial_migration:
                (self.root / "zdt_migrations" / "0001_initial.py").write_text(textwrap.dedent(
                    self.spec.initial_migration.format(table=self.spec.table, rows=self.rows)))
            else:
                self.manage("makemigrations (old code)", "makemigrations", APP, "--noinput", version="old")
            self.manage("migrate (old code)", "migrate", "--noinput", *(["--all-stages"] if self.safe else []),
                        version="old")
            dsn = self._database_url("owner") if self.profile.two_roles else self._server_dsn(self.dbname)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(self.spec.fill_sql.format(table=self.spec.table, rows=self.rows))
                conn.execute(f'ANALYZE "{self.spec.table}"')
            self.database.add_decoy(self.spec.table)
            # The blocker is a report query of the application: under two roles, the app role's.
            blocker_dsn = self._database_url("app") if self.profile.two_roles else dsn
            blocker = Blocker(blocker_dsn, self.spec.table, hold=self.blocker_hold, final_table=self.spec.final_table)
            blocker.start()
            old = self._start_traffic("old", "during migrate")
            running.append(old)
            before = {p.name for p in (self.root / "zdt_migrations").glob("0*.py")}
            self.manage("makemigrations" + (" --safe" if self.safe else ""), "makemigrations", APP,
                        *(["--safe"] if self.safe else []), stdin=self.spec.answers)
            for path in sorted((self.root / "zdt_migrations").glob("0*.py")):
                if path.name not in before:
                    self.result.migration_files[path.name] = path.read_text()
            report = self.root / "migrate.json"
            meanwhile = self._meanwhile(dsn, self.spec.during_migrate)
            self.manage("migrate (before deploy, old code serving)", "migrate", "--noinput",
                        *(["--report-json", str(report)] if self.safe else []), check=False, live=True)
            if meanwhile is not None:
                meanwhile.join(30)
            self._read_report(report)
            new = self._start_traffic("new", "rollout")
            running.append(new)
            time.sleep(self.rollout_seconds)
            running.remove(old)
            self._stop_traffic(old)
            if self.safe:
                running.remove(new)
                self._stop_traffic(new)
                new = self._start_traffic("new", "during migrate_contract")
                running.append(new)
                report = self.root / "contract.json"
                self.manage("migrate_contract (after rollout, new code only)", "migrate_contract", "--noinput",
                            "--report-json", str(report), check=False, live=True)
                self._read_report(report)
            time.sleep(0.3)
            running.remove(new)
            self._stop_traffic(new)
            blocker.stop()
            self.result.blocker_holds = blocker.holds
            check = self.manage("makemigrations --check", "makemigrations", APP, "--check", "--dry-run",
                                check=False)
            self.result.check_clean = check.returncode == 0
            if self.spec.initial_migration:  # a hand-made (partitioned) table: keep its end state to compare
                with psycopg.connect(dsn) as conn:
                    self.result.catalog = partition_snapshot(
                        lambda sql, params: conn.execute(sql, params).fetchall(), self.spec.table, names=False)
            if self.safe:
                self._verify(dsn)
        finally:
            for handle in running:
                try:
                    self._stop_traffic(handle)
                except Exception as exc:  # noqa: BLE001 - report and go on cleaning up
                    self.result.failures.append(str(exc))
            if blocker is not None and blocker.is_alive():
                blocker.stop()
            self.database.drop()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        return self.result

    def _verify(self, dsn):
        """Every row written by either version is present with the right final values."""
        expected = {}
        for summary in self.result.traffic:
            rules = self.spec.expect_old if summary.version == "old" else self.spec.expect_new
            for pk, values in summary.created:
                expected[pk] = {col: eval(expr, {"v": values}) for col, expr in rules.items()}  # noqa: S307
            for pk, values in summary.updated.items():
                expected.setdefault(int(pk), {}).update(
                    {col: eval(expr, {"v": values}) for col, expr in rules.items() if _uses_only(expr, values)})
        columns = sorted({col for rules in (self.spec.expect_old, self.spec.expect_new) for col in rules})
        table = self.spec.final_table or self.spec.table
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                f'SELECT id, {", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)} FROM "{table}" '
                f"WHERE id = ANY(%s)", [list(expected)]).fetchall()
        actual = {row[0]: dict(zip(columns, row[1:])) for row in rows}
        self.result.checked_rows = len(expected)
        for pk, values in expected.items():
            if pk not in actual:
                self.result.missing.append(pk)
                continue
            for col, value in values.items():
                found = actual[pk][col]
                if (found is None) if value == NOT_NULL else str(found) != str(value):
                    self.result.mismatches.append((pk, col, value, found))
        with psycopg.connect(dsn) as conn:
            self.result.table_home = conn.execute(
                "SELECT n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", [f'"{table}"']).fetchone()
            for query in self.spec.final_checks:
                if not conn.execute(query.format(table=table)).fetchone()[0]:
                    self.result.failed_checks.append(query)


def _uses_only(expression, values):
    """Whether a rule only reads keys an update wrote (updates write a subset)."""
    try:
        eval(expression, {"v": values})  # noqa: S307
        return True
    except (KeyError, TypeError):
        return False


class ScenarioError(RuntimeError):
    pass
