"""The kill -9 fault profile: every deploy step must survive SIGKILL at any point.

A deploy job can die anywhere: the runner is preempted, the OOM killer picks
it, an operator presses Ctrl-C twice. safemigrate promises that running the
same command again finishes the job. This harness checks that promise the
hard way, for each kind of change, against a real server:

1. Set up once per change (``testproject.scenario``): a database with the old
   schema and ``rows`` rows, and the expand/contract migrations from
   ``makemigrations --safe``. It becomes the template of every clone below.
2. Calibrate: on a clone, run ``migrate`` then ``migrate_contract`` cleanly,
   recording when each output line appeared. The resulting schema is the
   *baseline* fingerprint (columns, indexes, constraints, triggers, functions).
3. For each kill point, on a fresh clone: run the phase (``migrate`` or
   ``migrate_contract``, after a clean ``migrate``), send SIGKILL when the
   chosen output line has appeared and a chosen delay has passed, run the same
   command again ("first re-run"), then finish the deploy, and verify:
   every row has its expected final value, no INVALID index, no NOT VALID
   constraint, no unfinished backfill, no leftover (the schema fingerprint
   equals the baseline: no dual-write trigger or function, no helper column or
   index left), ``migrate_contract --check`` and ``makemigrations --check``
   clean.

Kill points are spread two ways: right after every few step or progress
lines (the next step has just started), and half-way through the longest
steps of the calibrated run (mid-backfill, mid-``CREATE INDEX CONCURRENTLY``,
mid-``VALIDATE``), timed from the line that precedes them. A killed client
leaves its server backend running until its statement ends; the re-run waits
for it on safemigrate's advisory lock, as a real re-run would.
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psycopg

from testproject.scenario import Scenario
from testproject.scenarios import SCENARIOS

#: The kinds of change of the fault profile, and SQL counting rows that do not
#: have their expected final value (every fill row is name 'n' || i, points i).
CHECKS = {
    "rename_field": "full_name IS DISTINCT FROM 'n' || points",
    "change_type": "name IS DISTINCT FROM 'n' || points",
    "add_indexes": "name IS DISTINCT FROM 'n' || points",
    "add_not_null_field": "name IS DISTINCT FROM 'n' || points OR currency IS DISTINCT FROM 'EUR'",
    "add_callable_default": "name IS DISTINCT FROM 'n' || points OR token IS NULL",
    "bigint_primary_key": "name IS DISTINCT FROM 'n' || points",
    "set_not_null": "note IS DISTINCT FROM CASE WHEN points % 3 = 0 THEN '' ELSE 'x' END",
}
DEFAULT_KINDS = ["rename_field", "change_type", "add_indexes", "add_not_null_field", "add_callable_default",
                 "bigint_primary_key"]
PHASES = {"migrate": ("migrate", "--noinput"), "contract": ("migrate_contract", "--noinput")}

FINGERPRINT_SQL = {
    "columns": """SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
                  || ' ' || coalesce(column_default, '') FROM information_schema.columns
                  WHERE table_schema = 'public'""",
    "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "constraints": """SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "triggers": "SELECT tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal",
    "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
    "views": "SELECT table_name FROM information_schema.views WHERE table_schema = 'public'",
}


@dataclass
class KillPoint:
    phase: str
    after_line: int  # index into the calibrated output lines; -1: from the start
    delay: float  # seconds after that line
    label: str

    def describe(self):
        return f"{self.phase} {self.label}"


@dataclass
class Outcome:
    kind: str
    point: KillPoint
    killed: bool = False
    killed_at: str = ""
    rerun_ok: bool = False
    recovered_after: int = 0  # re-runs needed (1 = first re-run)
    problems: list = field(default_factory=list)
    rerun_output: str = ""
    seconds: float = 0.0
    left: dict = field(default_factory=dict)  # what the kill left for the re-run to repair

    @property
    def ok(self):
        return not self.problems


class Clone:
    """A throw-away copy of the scenario's template database, used by one kill point."""

    def __init__(self, scenario, template, name):
        self.scenario, self.template, self.name = scenario, template, name

    def __enter__(self):
        with psycopg.connect(self.scenario._server_dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{self.template}"')
        self.scenario.dbname = self.name
        return self

    def __exit__(self, *exc):
        self.scenario.dbname = self.template
        with psycopg.connect(self.scenario._server_dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def dsn(self):
        return self.scenario._server_dsn(self.name)


def significant(line):
    """Lines that mark progress: migrations applied, steps done, backfill progress."""
    return line.startswith("  Applying") or line.startswith("    ")


def run_phase(scenario, args, kill=None):
    """Run ``manage.py args`` in a subprocess; ``kill`` is ``(after_line, delay)``.

    Returns ``(returncode, lines, times, killed_at)``; ``lines``/``times`` are the
    significant output lines and when they appeared (seconds from start).
    """
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "django", *args], cwd=scenario.root,
        # Unbuffered, so a line is seen (and a kill fires) when it is printed, not at exit.
        env={**scenario._env("new"), "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output, lines, times, killed_at = [], [], [], ""
    deadline = started + kill[1] if kill is not None and kill[0] < 0 else None
    fd, buffer, eof = process.stdout.fileno(), b"", False
    while not eof:
        now = time.monotonic()
        if deadline is not None and now >= deadline and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_at = f"{now - started:.2f}s after start, after line {len(lines) - 1}: " + (
                lines[-1].strip() if lines else "(none)")
            deadline = None
        ready, _, _ = select.select([fd], [], [], 0.005)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        eof = not chunk
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        if eof and buffer:
            complete.append(buffer)
        for raw in complete:
            line = raw.decode(errors="replace")
            output.append(line)
            if significant(line):
                lines.append(line)
                times.append(time.monotonic() - started)
                if kill is not None and kill[0] >= 0 and not killed_at and len(lines) - 1 == kill[0]:
                    deadline = time.monotonic() + kill[1]
    process.stdout.close()
    process.wait()
    process.output = "\n".join(output)
    return process.returncode, lines, times, killed_at, process.output


def fingerprint(dsn):
    with psycopg.connect(dsn) as conn:
        return {name: sorted(row[0] for row in conn.execute(sql)) for name, sql in FINGERPRINT_SQL.items()}


def verify(scenario, kind, dsn, rows, baseline):
    """Everything a finished deploy must satisfy; returns a list of problems."""
    problems = []
    table = scenario.spec.table
    with psycopg.connect(dsn) as conn:
        count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if count != rows:
            problems.append(f"{count} rows in {table}, expected {rows}")
        bad = conn.execute(f'SELECT count(*) FROM "{table}" WHERE {CHECKS[kind]}').fetchone()[0]
        if bad:
            problems.append(f"{bad} rows with a wrong value ({CHECKS[kind]})")
        for query in scenario.spec.final_checks:
            if not conn.execute(query.format(table=table)).fetchone()[0]:
                problems.append(f"final check failed: {query}")
        invalid = conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()
        if invalid:
            problems.append(f"INVALID indexes: {invalid}")
        not_valid = conn.execute("SELECT conname FROM pg_constraint WHERE NOT convalidated").fetchall()
        if not_valid:
            problems.append(f"NOT VALID constraints: {not_valid}")
        unfinished = conn.execute(
            "SELECT name FROM safemigrate_backfill_progress WHERE NOT done"
        ).fetchall() if conn.execute("SELECT to_regclass('safemigrate_backfill_progress')").fetchone()[0] else []
        if unfinished:
            problems.append(f"unfinished backfills: {unfinished}")
    if baseline is not None:
        found = fingerprint(dsn)
        for part, expected in baseline.items():
            extra = sorted(set(found[part]) - set(expected))
            missing = sorted(set(expected) - set(found[part]))
            if extra or missing:
                problems.append(f"{part} differ from a clean run: extra {extra}, missing {missing}")
    code, *_, output = run_phase(scenario, ("migrate_contract", "--check"))
    if code != 0:
        problems.append(f"migrate_contract --check exited {code}: {output[-500:]}")
    code, *_, output = run_phase(scenario, ("makemigrations", "zdtapp", "--check", "--dry-run"))
    if code != 0:
        problems.append(f"makemigrations --check exited {code}: {output[-500:]}")
    return problems


def leftovers(print_):
    """Problems a clean run itself must not have: helper objects after contract."""
    problems = []
    for part in ("triggers",):
        if print_[part]:
            problems.append(f"{part} left after contract: {print_[part]}")
    helpers = [c for c in print_["columns"] if "__sm" in c] + [i for i in print_["indexes"] if "__sm" in i]
    if helpers:
        problems.append(f"helper columns/indexes left after contract: {helpers}")
    return problems


def kill_points(phase, lines, times, spread):
    """Right after every few output lines, and in the middle of the ``spread`` longest steps.

    A step's line is printed when it ends, so the gap between two lines of the
    clean run is how long the second line's step took; killing half-way
    through that gap after the first line lands in the middle of that step
    (a backfill, a CREATE INDEX CONCURRENTLY, a VALIDATE) whatever Django's
    start-up time is on the day.
    """
    points = []
    if times:
        step = max(1, len(times) // spread)
        for index in range(0, len(times), step):
            points.append(KillPoint(phase, index, 0.0, f"right after output line {index}"))
    gaps = sorted(((times[i + 1] - times[i], i) for i in range(len(times) - 1)), reverse=True)[:spread]
    for gap, index in sorted(gaps, key=lambda pair: pair[1]):
        if gap >= 0.02:
            step_name = lines[index + 1].strip().split(": ")[-1][:70]
            label = f"{gap / 2:.2f}s after line {index}, mid-step ({step_name})"
            points.append(KillPoint(phase, index, gap / 2, label))
    return points


def prepare(kind, rows):
    """The scenario of ``kind`` and its template database (old schema, rows, new migrations)."""
    scenario = Scenario(SCENARIOS[kind], rows=rows, echo=lambda *a: None)
    with psycopg.connect(scenario._server_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scenario.dbname}"')
    scenario._write_tree()
    try:
        scenario.manage("makemigrations (old code)", "makemigrations", "zdtapp", "--noinput", version="old")
        scenario.manage("migrate (old code)", "migrate", "--noinput", "--all-stages", version="old")
        with psycopg.connect(scenario._server_dsn(scenario.dbname), autocommit=True) as conn:
            conn.execute(scenario.spec.fill_sql.format(table=scenario.spec.table, rows=rows))
            conn.execute(f'ANALYZE "{scenario.spec.table}"')
        scenario.manage("makemigrations --safe", "makemigrations", "zdtapp", "--safe", stdin=scenario.spec.answers)
    except BaseException:
        discard(scenario)
        raise
    return scenario


def discard(scenario):
    with psycopg.connect(scenario._server_dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{scenario.dbname}" WITH (FORCE)')
    shutil.rmtree(scenario.root, ignore_errors=True)


def calibrate(scenario, kind, rows, echo=print):
    """A clean deploy on a copy: ``({phase: (lines, times)}, schema fingerprint, problems)``."""
    problems, timings = [], {}
    with Clone(scenario, scenario.dbname, f"{scenario.dbname}_cal") as clone:
        for phase, args in PHASES.items():
            code, lines, times, _, output = run_phase(scenario, args)
            if code != 0:
                problems.append(f"clean {phase} failed: {output[-2000:]}")
            timings[phase] = (lines, times)
            echo(f"[{kind}] clean {phase}: {len(lines)} lines in {times[-1] if times else 0:.1f}s")
            for line, at in zip(lines, times):
                echo(f"      {at:6.2f}s {line.strip()[:150]}")
        baseline = fingerprint(clone.dsn())
        problems += leftovers(baseline)
        problems += verify(scenario, kind, clone.dsn(), rows, None)
    return timings, baseline, problems


def left_behind(dsn):
    """What a kill left for the re-run to repair: INVALID indexes, unfinished backfills."""
    with psycopg.connect(dsn) as conn:
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0]
        unfinished = conn.execute(
            "SELECT count(*) FROM safemigrate_backfill_progress WHERE NOT done"
        ).fetchone()[0] if conn.execute("SELECT to_regclass('safemigrate_backfill_progress')").fetchone()[0] else 0
    return {"invalid indexes": invalid, "unfinished backfills": unfinished}


def terminate_backends(dsn):
    """End every other session on the clone: the killed client's backend, mid-statement.

    Without this the orphaned backend finishes its statement (PostgreSQL only
    notices a vanished client when it next talks to it). Terminating it is
    what a server restart, a failover, or ``client_connection_check_interval``
    does: a ``CREATE INDEX CONCURRENTLY`` stops half-built (INVALID), a
    backfill batch rolls back.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def profile(kind, rows=20_000, spread=4, echo=print, max_reruns=3, terminate=False):
    """Run the fault profile of one kind of change; returns ``(outcomes, setup_problems)``.

    ``terminate``: also end the killed client's server backend right after the kill.
    """
    scenario = prepare(kind, rows)
    template = scenario.dbname
    outcomes = []
    try:
        timings, baseline, setup = calibrate(scenario, kind, rows, echo)
        if setup:
            return outcomes, setup

        points = [point for phase, (lines, times) in timings.items()
                  for point in kill_points(phase, lines, times, spread)]
        for number, point in enumerate(points):
            outcome = Outcome(kind, point)
            started = time.monotonic()
            with Clone(scenario, template, f"{template}_{number}") as clone:
                if point.phase == "contract":
                    code, *_, output = run_phase(scenario, PHASES["migrate"])
                    if code != 0:
                        outcome.problems.append(f"migrate before contract failed: {output[-1500:]}")
                args = PHASES[point.phase]
                code, _, _, killed_at, output = run_phase(scenario, args, kill=(point.after_line, point.delay))
                outcome.killed, outcome.killed_at = bool(killed_at), killed_at
                if terminate and killed_at:
                    outcome.killed_at += f" (+{terminate_backends(clone.dsn())} backends terminated)"
                outcome.left = left_behind(clone.dsn())
                for attempt in range(1, max_reruns + 1):
                    code, *_, output = run_phase(scenario, args)
                    if attempt == 1:
                        outcome.rerun_ok, outcome.rerun_output = code == 0, output[-3000:]
                    if code == 0:
                        outcome.recovered_after = attempt
                        break
                if not outcome.recovered_after:
                    outcome.problems.append(f"{point.phase} still fails after {max_reruns} re-runs: {output[-2000:]}")
                if point.phase == "migrate" and outcome.recovered_after:
                    code, *_, output = run_phase(scenario, PHASES["contract"])
                    if code != 0:
                        outcome.problems.append(f"migrate_contract after recovery failed: {output[-2000:]}")
                if outcome.recovered_after:
                    outcome.problems += verify(scenario, kind, clone.dsn(), rows, baseline)
            outcome.seconds = time.monotonic() - started
            outcomes.append(outcome)
            status = ("ok" if outcome.ok else "FAILED") + ("" if outcome.rerun_ok else " (first re-run failed)")
            left = ", ".join(f"{v} {k}" for k, v in outcome.left.items() if v)
            what = "killed " + outcome.killed_at if outcome.killed else "finished before the kill"
            echo(f"[{kind}] {point.describe()}: {what}{'; left ' + left if left else ''} -> {status} "
                 f"({outcome.seconds:.1f}s)")
            for problem in outcome.problems:
                echo(f"      {problem}")
            if not outcome.rerun_ok and outcome.ok:
                echo(f"      first re-run output: {outcome.rerun_output[-800:]}")
    finally:
        discard(scenario)
    return outcomes, setup
