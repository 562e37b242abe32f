"""The rehearsal engine: a whole deploy, rolled back and redone, on a scratch database, measured.

``manage.py rehearse`` parses options and prints; this module does the work:

1. drop scratch databases a killed rehearsal left (``pg.scratch``);
2. read the source, and only read it: its applied migrations and table
   statistics, in read-only transactions; Django's connection to it is closed
   before anything is created;
3. make the scratch database: a template copy, a clone, or an empty database
   filled with a sample (schema from ``pg_dump`` when a fit one is installed,
   else by replaying the applied migrations, with a drift check);
4. run the deploy on it through the same execution path ``migrate`` uses
   (``pg.execution.BoundedExecutorMixin``): expand, a short rollout with the
   old and the new code's models writing, contract, the rollback, and the
   release again, each migration a measured step (``pg.measure``); compare
   the schema after the rollback with the one before the release, and after
   the second run with the first; on a failure, name the step and the rows;
5. scale what was measured to production size (``planning.estimates``);
6. drop the scratch database (``--keep`` keeps it).

The result is a plain dict (the JSON report); ``planning.rehearsal_report``
renders it and checks the budgets.
"""

import contextlib
import time
import uuid
from dataclasses import dataclass, field

import psycopg
from django.db import DatabaseError, connections, router
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from ..conf import conf
from ..pg import background_mode
from ..pg import background_state as bg
from ..pg import sampling, schema_dump, schema_snapshot, scratch as scratches, table_stats
from ..pg.background_runner import finalize_inline
from ..pg.connect import connect
from ..pg.execution import BoundedExecutorMixin
from ..pg.fit import Requirement, columns_of, misfits
from ..pg.measure import Meter
from ..pg.reporting import Report, collecting
from ..stages import migration_stage, split_plan
from . import estimates, rebuilds, rehearsal_plan, rollout
from .releases import refuse_blocked

SCHEMA_VERSION = 1
_INTEGER_TYPES = rollout._INTEGERS


class RehearsalInputError(Exception):
    """Bad input or an unreadable source: exit status 2, with the message."""


@dataclass
class Options:
    database: str = "default"
    #: "sample", "template" or "clone"
    mode: str = "sample"
    template: "str | None" = None
    percent: "float | None" = None
    seed: int = 0
    since_ref: "str | None" = None
    since_files: "set | None" = None
    keep: bool = False
    rollout_rows: int = 10
    rollback_from: str = "auto"
    lock_sample_ms: float = 5.0
    scratch_database: "str | None" = None
    echo: object = None


@dataclass
class _Phase:
    name: str
    status: str = "ok"
    steps: list = field(default_factory=list)
    note: str = ""


class _Executor(BoundedExecutorMixin, MigrationExecutor):
    """Django's executor with every statement on the path ``migrate`` uses."""


@contextlib.contextmanager
def _alias(settings_dict, prefix):
    """A temporary entry in ``django.db.connections`` for ``settings_dict``."""
    alias = f"{prefix}_{uuid.uuid4().hex[:8]}"
    settings_dict = dict(settings_dict, CONN_MAX_AGE=0)
    settings_dict["OPTIONS"] = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != "pool"}
    connections.settings[alias] = settings_dict
    try:
        yield alias
    finally:
        try:
            connections[alias].close()
        finally:
            with contextlib.suppress(Exception):
                del connections[alias]
            connections.settings.pop(alias, None)


@contextlib.contextmanager
def _routed_as(source_alias, aliases):
    """Database routers answer for the scratch aliases as they do for the source alias."""
    original = router.allow_migrate

    def allow_migrate(db, app_label, **hints):
        return original(source_alias if db in aliases else db, app_label, **hints)

    router.allow_migrate = allow_migrate
    try:
        yield
    finally:
        del router.allow_migrate


def _read_only(settings_dict, dbname=None):
    connection = connect(settings_dict, dbname, autocommit=False, application_name="safemigrate:rehearse:source")
    connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    connection.read_only = True
    return connection


def _unreadable(what, exc):
    return RehearsalInputError(
        f"Cannot read the source ({what}): {' '.join(str(exc).split())}. rehearse only reads the source; check "
        "the --database alias (or --from-template name), that the server is reachable and that the role may "
        "connect and read it.")


class Rehearsal:
    def __init__(self, options):
        self.options = options
        self.echo = options.echo or (lambda line: None)
        self.source = connections[options.database]
        self.settings = dict(self.source.settings_dict)
        server_alias = options.scratch_database or options.database
        self.server_settings = dict(connections[server_alias].settings_dict)
        self.result = {"schema_version": SCHEMA_VERSION, "ok": False, "notes": [], "failures": [], "checks": [],
                       "phases": [], "steps": []}
        self.scratch = None
        self.rollout = None
        self.phases = []

    # -- entry point ----------------------------------------------------------------------------

    def run(self):
        options = self.options
        result = self.result
        result["source"] = {"database": options.database, "name": self.settings.get("NAME"), "mode": options.mode,
                            "sample_percent": options.percent, "template": options.template}
        for name in scratches.drop_stale(self.server_settings, echo=self.echo):
            result["notes"].append(f"dropped scratch database {name}, left by a rehearsal that no longer runs")
        self._precheck()
        try:
            self._make_scratch()
            with _alias(self.scratch.settings, "rehearse") as alias, \
                    _alias(self.scratch.settings, "rehearse_rollout") as rollout_alias, \
                    _routed_as(options.database, {alias, rollout_alias}):
                self.alias, self.rollout_alias = alias, rollout_alias
                self._fill()
                self._deploy()
        finally:
            self._drop()
        result["ok"] = not result["failures"]
        return result

    # -- the source -----------------------------------------------------------------------------

    def _precheck(self):
        """Read what is pending and how big the tables are; fail early on bad input."""
        options = self.options
        data_settings = dict(self.settings)
        if options.mode == "template":
            data_settings["NAME"] = options.template
        try:
            if options.mode != "clone":
                with _alias(data_settings, "rehearse_source") as alias:
                    loader = MigrationLoader(connections[alias])
                    rehearsal_plan.release_of(loader.graph, set(loader.applied_migrations), options.since_files,
                                              _file_of)
            with contextlib.closing(_read_only(self.settings)) as connection:
                with connection.cursor() as cursor:
                    self.source_sizes = table_stats.table_sizes(cursor)
                    self.source_locale = scratches.source_locale(cursor, self.settings.get("NAME"))
                    self.source_version = connection.info.server_version
                connection.rollback()
        except (rehearsal_plan.NothingToRehearse, rehearsal_plan.ReleaseError):
            raise
        except (DatabaseError, psycopg.Error) as exc:
            raise _unreadable(f"database {data_settings.get('NAME')!r} of alias {options.database!r}", exc) from None
        finally:
            self.source.close()

    # -- the scratch database -------------------------------------------------------------------

    def _make_scratch(self):
        options = self.options
        started = time.monotonic()
        if options.mode == "template":
            self.echo(f"Copying database {options.template!r} (CREATE DATABASE ... TEMPLATE) ...")
            self.scratch = scratches.from_template(self.server_settings, options.template)
        elif options.mode == "clone":
            self.echo("Making a clone with REHEARSE_CLONE_COMMAND ...")
            self.scratch = scratches.run_clone_command(conf.rehearse_clone_command, conf.rehearse_drop_command,
                                                       self.server_settings, self.settings.get("NAME"))
        else:
            like = {k: v for k, v in (self.source_locale or {}).items()} if self.source_locale else None
            self.scratch = scratches.empty(self.server_settings, like, source=self.settings.get("NAME"))
        self.result["scratch"] = {"name": self.scratch.name, "kind": self.scratch.kind, "kept": self.options.keep,
                                  "seconds": round(time.monotonic() - started, 3)}
        self.result["notes"].extend(self.scratch.notes)

    def _fill(self):
        options = self.options
        connection = connections[self.alias]
        if options.mode != "sample":
            with connection.cursor() as cursor:
                sizes = table_stats.table_sizes(cursor)
                unanalysed = [t for t, s in sizes.items() if not s.analysed]
                table_stats.analyze(cursor, connection.ops.quote_name, unanalysed)
                if unanalysed:
                    sizes = table_stats.table_sizes(cursor)
            self.scratch_rows = {t: s.rows for t, s in sizes.items()}
            self.scratch_sizes = sizes
            self.result["source"]["schema_from"] = "the copy itself"
        else:
            self._fill_sample(connection)
        self.factors = estimates.factors(self.source_sizes, self.scratch_rows, self.scratch_sizes)
        self.result["tables"] = [
            {"table": t, "source_rows": round(f.source_rows), "rehearsed_rows": round(f.scratch_rows),
             "scale": round(f.linear, 3), "basis": f.basis}
            for t, f in sorted(self.factors.items())]

    def _fill_sample(self, connection):
        options = self.options
        pg_dump, why = schema_dump.find_pg_dump(conf.rehearse_pg_dump, self.source_version)
        started = time.monotonic()
        with contextlib.closing(_read_only(self.settings)) as source:
            try:
                if pg_dump:
                    self.echo(f"Schema: pg_dump --schema-only with {why} ...")
                    schema_dump.restore_schema(self.scratch.settings, schema_dump.dump_schema(pg_dump, self.settings))
                    self.result["source"]["schema_from"] = f"pg_dump --schema-only ({why})"
                else:
                    self.echo(f"Schema: replaying the applied migrations ({why}) ...")
                    self._replay(connection, source)
                self.echo(f"Copying a {options.percent:g} % sample (seed {options.seed}) ...")
                sample = sampling.copy_sample(source, connection, percent=options.percent, seed=options.seed,
                                              echo=self.echo)
            except sampling.SourceUnreadable as exc:
                raise RehearsalInputError(str(exc)) from None
            except psycopg.Error as exc:
                raise _unreadable("while copying the sample", exc) from None
            source.rollback()
        self.result["notes"].extend(sample.notes)
        self.result["sample"] = {
            "percent": options.percent, "seed": options.seed, "rounds": sample.rounds,
            "seconds": round(time.monotonic() - started, 3),
            "tables": [{"table": t.label, "whole": t.whole, "sampled": t.sampled,
                        "added_for_foreign_keys": t.added_for_foreign_keys} for t in sample.tables.values()]}
        self.scratch_rows = {label: t.rows for label, t in sample.tables.items()}
        with connection.cursor() as cursor:
            self.scratch_sizes = table_stats.table_sizes(cursor)

    def _replay(self, connection, source):
        with source.cursor() as cursor:
            applied = {(app, name) for app, name in cursor.execute("SELECT app, name FROM django_migrations")}
        executor = MigrationExecutor(connection)
        graph = executor.loader.graph
        plan = [(graph.nodes[key], False) for key in rehearsal_plan.forwards_order(graph) if key in applied]
        executor.migrate(None, plan=plan)
        with connection.cursor() as cursor:
            tables = table_stats.user_tables(cursor)
        sampling.empty_tables(connection, tables)
        self.result["source"]["schema_from"] = "the applied migrations, replayed (no fit pg_dump)"
        with source.cursor() as cursor:
            expected = schema_snapshot.snapshot(cursor)
        with connection.cursor() as cursor:
            actual = schema_snapshot.snapshot(cursor)
        drift = schema_snapshot.diff(expected, actual)
        if drift:
            self.result["notes"].append(
                "the source's schema differs from what its applied migrations make (objects made by hand?); "
                "the rehearsal ran on the migrations' schema: " + "; ".join(drift[:10])
                + (f"; and {len(drift) - 10} more" if len(drift) > 10 else ""))

    def _drop(self):
        if self.scratch is None:
            return
        note = scratches.drop(self.scratch, keep=self.options.keep)
        if self.options.keep and self.scratch.kind != "clone":
            self.result["scratch"]["name"] = self.scratch.name
            self.result["notes"].append(f"the scratch database was kept (--keep) as {self.scratch.name}; drop it "
                                        f"when done: DROP DATABASE \"{self.scratch.name}\"")
        elif note:
            self.result["notes"].append(note)

    # -- the deploy -----------------------------------------------------------------------------

    def _deploy(self):
        options = self.options
        connection = connections[self.alias]
        loader = MigrationLoader(connection)
        graph = loader.graph
        try:
            release = rehearsal_plan.release_of(graph, set(loader.applied_migrations), options.since_files, _file_of)
        except rehearsal_plan.NothingToRehearse:
            raise
        point, why = rehearsal_plan.rollback_point(graph, release, options.rollback_from)
        self.release, self.graph = release, graph
        self.result["release"] = {
            "migrations": [f"{a}.{n}" for a, n in release.keys],
            "stages": {f"{a}.{n}": str(migration_stage(graph.nodes[(a, n)])) for a, n in release.keys},
            "catch_up": [f"{a}.{n}" for a, n in release.catch_up],
            "untouched": [f"{a}.{n}" for a, n in release.untouched],
            "since": options.since_ref, "rollback_from": point, "rollback_note": why}
        if release.catch_up:
            self.echo(f"Catching up: {len(release.catch_up)} migration(s) the release needs (not measured) ...")
            executor = MigrationExecutor(connection)
            plan = [(graph.nodes[key], False) for key in release.catch_up]
            try:
                executor.migrate(None, plan=plan)
            except Exception as exc:  # noqa: BLE001 - reported as the rehearsal's failure
                needed = ", ".join(f"{a}.{n}" for a, n in release.catch_up)
                self.result["failures"].append(f"catch-up: applying the migrations the release needs ({needed}) "
                                               f"failed before the release could run: {_error_text(exc)}")
                return
        self.report = Report()
        self.meter = Meter(connection, self.scratch.settings, options.lock_sample_ms).start()
        self.old_state = loader.project_state(release.old_nodes) if release.old_nodes else None
        self.new_state = loader.project_state(release.new_nodes)
        error = None
        production = {table: factor.source_rows for table, factor in self.factors.items()}
        try:
            with collecting(self.report), self.meter.installed(), background_mode.sized_as(production):
                self._phases(point)
        except _StepFailed as exc:
            error = exc
        finally:
            sampler_error = self.meter.finish()
            if sampler_error:
                self.result["notes"].append(f"the lock sampler stopped: {sampler_error}")
        if error is None:
            self._repeat_short_builds(connection)
        self._estimate()
        if error:
            self.result["failures"].append(error.describe())

    def _repeat_short_builds(self, connection):
        """Time the short index builds again (``planning.rebuilds``); a failure only costs the damping."""
        try:
            sampled = {table for table, factor in self.factors.items() if factor.linear >= 2.0}  # half or less
            count = rebuilds.time_again(connection, self.meter.steps, tables=sampled)
        except Exception as exc:  # noqa: BLE001 - the rehearsal itself succeeded; say what was not done
            self.result["notes"].append(f"index builds were not timed again ({_error_text(exc)}): each "
                                        f"estimate scales the one run the release made")
            return
        if count:
            self.result["notes"].append(f"{count} index build(s) under {rebuilds.REPEAT_BELOW_S:.0f} s were built "
                                        f"{rebuilds.REPEATS} more times on the copy after the release; their "
                                        f"estimates scale the fastest run")

    def _snapshot(self):
        with connections[self.alias].cursor() as cursor:
            return schema_snapshot.snapshot(cursor)

    def _check(self, name, expected, phase):
        differences = schema_snapshot.diff(expected, self._snapshot())
        self.result["checks"].append({"name": name, "ok": not differences, "differences": differences[:50]})
        if differences:
            raise _StepFailed(phase, None, f"{name}: the schema differs ({len(differences)} difference(s)): "
                              + "; ".join(differences[:5]))

    def _phases(self, point):
        before = self._snapshot()
        self._run_phase("expand", "forwards", expand_only=True)
        after_expand = self._snapshot()
        if self.options.rollout_rows:
            self._rollout()
        if point == "contract":
            self._run_background("background")
            self._run_phase("contract", "forwards")
            after_contract = self._snapshot()
            self._run_phase("rollback", "backwards")
            self._check("the rollback restores the pre-release schema", before, "rollback")
            self._run_phase("expand again", "forwards", expand_only=True)
            self._check("expand after the rollback ends as the first expand did", after_expand, "expand again")
            self._run_background("background again")
            self._run_phase("contract again", "forwards")
            self._check("the release run again ends as a direct forward run", after_contract, "contract again")
        elif point == "expand":
            self._run_phase("rollback", "backwards")
            self._check("the rollback restores the pre-release schema", before, "rollback")
            self._run_phase("expand again", "forwards", expand_only=True)
            self._check("expand after the rollback ends as the first expand did", after_expand, "expand again")
            self._run_background("background")
            self._run_phase("contract", "forwards")
        else:
            self._run_background("background")
            self._run_phase("contract", "forwards")

    def _run_background(self, name):
        """What ``backfills run`` does between expand and contract: every copy expand enqueued, to the end.

        Without this phase the contract finished the copies itself, within the
        gate's inline budget (60 s): a sample always fits in it, production
        does not, so the sample's prediction described a contract that would be
        refused at full size, and a full-size rehearsal failed. The copies run
        here through ``finalize_inline`` (the gate's own path, with no time
        limit), so every batch is measured and scaled as a backfill's is. In a
        deploy they run in the background at ``BACKGROUND_DUTY_CYCLE``, which
        stretches the wall time by its inverse; the basis says so.
        """
        connection = connections[self.alias]
        phase = _Phase(name)
        self.phases.append(phase)
        names = [row.name for row in bg.all_rows(connection, bg.RUNNABLE)]
        if not names:
            phase.note = "no background migration enqueued"
            return
        self.echo(f"{name}: {len(names)} background migration(s) ...")
        for job in names:
            record = {"phase": name, "migration": f"backfills run {job}", "direction": "background",
                      "status": "ok"}
            mark = len(self.report.batches)
            self.meter.begin(record["migration"])
            error = None
            try:
                row = finalize_inline(connection, job, 7 * 24 * 3600, echo=self.echo, report=self.report)
                if row.state not in (bg.FINISHED, bg.FINALIZED):
                    error = f"background migration {job} ended {row.state}: {row.error or row.hold_reason or ''}"
            except Exception as exc:  # noqa: BLE001 - a failed copy is the rehearsal's finding
                error = _error_text(exc)
            record["measurement"] = self.meter.end(self.report.batches[mark:])
            phase.steps.append(record)
            if error:
                phase.status = record["status"] = "failed"
                record["error"] = error
                raise _StepFailed(name, record, error)

    def _plan(self, executor, direction, expand_only):
        graph = executor.loader.graph
        if direction == "backwards":
            return executor.migration_plan(self.release.rollback_targets)
        plan = [(m, b) for m, b in executor.migration_plan(self.release.targets) if not b]
        if not expand_only:
            return plan
        runnable, held = split_plan(plan, graph)
        try:
            refuse_blocked(held, graph)
        except Exception as exc:  # noqa: BLE001 - CommandError: migrate would refuse the same way
            raise _StepFailed("expand", None, str(exc)) from None
        return runnable

    def _run_phase(self, name, direction, expand_only=False):
        connection = connections[self.alias]
        phase = _Phase(name)
        self.phases.append(phase)
        tracker = _StepTracker(self, phase, direction)
        executor = _Executor(connection, progress_callback=tracker.callback)
        plan = self._plan(executor, direction, expand_only)
        self.echo(f"{name}: {len(plan)} migration(s) ...")
        if not plan:
            phase.note = "nothing to run"
            return
        try:
            executor.migrate(None, plan=plan)
        except Exception as exc:  # noqa: BLE001 - every failure of a step is the rehearsal's finding
            phase.status = "failed"
            failed = tracker.fail(exc)
            raise _StepFailed(name, failed, _error_text(exc), rows=failed and failed.get("failing_rows")) from exc

    def _rollout(self):
        phase = _Phase("rollout")
        self.phases.append(phase)
        apps = {app for app, _ in self.release.keys}
        old = self.old_state
        if old is None:
            phase.note = "no models before the release"
            return
        keys = rollout.changed_models(old, self.new_state, apps)
        step = self.meter.begin("rollout")
        batches = len(self.report.batches)
        result = rollout.simulate(old.apps, self.new_state.apps, keys, self.rollout_alias, connections[self.alias],
                                  self.options.rollout_rows)
        writer = connections[self.rollout_alias]
        if writer.connection is not None:
            with contextlib.suppress(Exception):
                writer.connection.execute("SELECT pg_stat_force_next_flush()")  # its rows count in this step
        writer.close()
        measured = self.meter.end(self.report.batches[batches:])
        record = {"phase": "rollout", "migration": None, "direction": "rollout", "status": "ok",
                  "measurement": measured, "rows_written": result.written, "edges": result.edges}
        self.rollout = result
        self.result["rollout"] = {"models": [f"{a}.{m}" for a, m in keys], "rows": result.rows,
                                  "written": result.written, "edge_values": result.edges, "notes": result.notes}
        self.result["notes"].extend(result.notes)
        phase.steps.append(record)
        if result.failures:
            phase.status = record["status"] = "failed"
            record["error"] = " ".join(result.failures)
            raise _StepFailed("rollout", record, " ".join(result.failures))
        del step

    # -- diagnosis ------------------------------------------------------------------------------

    def diagnose(self, migration, backwards):
        """Rows that do not fit the schema the failed step was going to: ``[{table, column, problem, ...}]``."""
        connection = connections[self.alias]
        connection.close()
        loader = MigrationLoader(None, ignore_no_migrations=True)
        key = (migration.app_label, migration.name)
        try:
            state = loader.project_state(key, at_end=not backwards)
        except Exception:  # noqa: BLE001 - diagnosis is best effort
            return []
        names = set()
        for operation in migration.operations:
            for attribute in ("model_name", "name"):
                value = getattr(operation, attribute, None)
                if isinstance(value, str) and (migration.app_label, value.lower()) in state.models:
                    names.add(value.lower())
                    break
        if not names:
            names = {name for app, name in state.models if app == migration.app_label}
        found = []
        written = {}
        if self.rollout:
            for version, models in self.rollout.written.items():
                for label, pks in models.items():
                    written.setdefault(label, {}).update({pk: version for pk in pks})
        for name in sorted(names):
            model = state.apps.get_model(migration.app_label, name)
            if not model._meta.managed or model._meta.proxy:
                continue
            table, key_column = model._meta.db_table, model._meta.pk.column
            current = columns_of(connection, table)
            if not current or key_column not in current:
                continue
            for f in model._meta.concrete_fields:
                if f.column not in current:
                    continue
                for requirement in _requirements(f, connection, current[f.column]):
                    try:
                        count, keys = misfits(connection, table, key_column, f.column, requirement)
                    except DatabaseError:
                        continue
                    if count:
                        by = written.get(model._meta.label, {})
                        found.append({
                            "table": table, "column": f.column, "problem": requirement.describe(f.column),
                            "count": count, "rows": [_jsonable(k) for k in keys],
                            "written_by": {str(k): f"{by[k]} code during the rollout" for k in keys if k in by}})
        return found

    # -- estimates ------------------------------------------------------------------------------

    def _estimate(self):
        memory = {}
        with contextlib.suppress(Exception), connections[self.alias].cursor() as cursor:
            memory = table_stats.settings_of(cursor)
        phases = []
        for phase in self.phases:
            entry = {"name": phase.name, "status": phase.status, "note": phase.note, "measured_seconds": 0.0,
                     "predicted_seconds": 0.0, "steps": []}
            for record in phase.steps:
                step = _step_entry(record, self.factors, memory)
                entry["steps"].append(step["id"])
                entry["measured_seconds"] += step["measured"]["seconds"]
                entry["predicted_seconds"] += step["predicted"]["seconds"]
                self.result["steps"].append(step)
            entry["measured_seconds"] = round(entry["measured_seconds"], 3)
            entry["predicted_seconds"] = round(entry["predicted_seconds"], 3)
            phases.append(entry)
        self.result["phases"] = phases
        first = {p["name"]: p for p in phases}
        backfills = [s for s in self.result["steps"] if s["backfill"]]
        blocking = [(h["predicted_ms"], s["id"], h) for s in self.result["steps"] for h in s["locks"]
                    if h["blocking"] and s["phase"] != "rollout"]
        self.result["predicted"] = {
            "expand_seconds": first.get("expand", {}).get("predicted_seconds", 0.0),
            "contract_seconds": first.get("contract", {}).get("predicted_seconds", 0.0),
            "background_seconds": first.get("background", {}).get("predicted_seconds", 0.0),
            "rollback_seconds": first.get("rollback", {}).get("predicted_seconds", 0.0),
            "backfill_seconds": round(max((s["backfill"]["predicted_seconds"] for s in backfills), default=0.0), 3),
            "max_lock_hold_ms": max((ms for ms, _s, _h in blocking), default=0.0),
        }


class _StepFailed(Exception):
    def __init__(self, phase, step, message, rows=None):
        super().__init__(message)
        self.phase, self.step, self.message, self.rows = phase, step, message, rows or []

    def describe(self):
        where = f"{self.phase}"
        if self.step and self.step.get("migration"):
            where += f", {self.step['migration']} ({self.step['direction']})"
        text = f"{where}: {self.message}"
        for row in self.rows:
            shown = ", ".join(str(k) for k in row["rows"])
            more = f" and {row['count'] - len(row['rows'])} more" if row["count"] > len(row["rows"]) else ""
            by = "; ".join(f"{k}: {v}" for k, v in row["written_by"].items())
            text += (f"\n  {row['table']} rows {shown}{more}: {row['problem']}" + (f" ({by})" if by else ""))
        return text


class _StepTracker:
    """Turns the executor's progress callbacks into measured steps."""

    def __init__(self, rehearsal, phase, direction):
        self.rehearsal, self.phase, self.direction = rehearsal, phase, direction
        self.open = None
        self.mark = 0

    def callback(self, action, migration=None, fake=False):
        if action in ("apply_start", "unapply_start"):
            label = f"{migration.app_label}.{migration.name}"
            if self.open is not None and self.open["migration"] == label:
                self.rehearsal.meter.attach()  # the whole migration is retried after a lock timeout: one step
                return
            meter, report = self.rehearsal.meter, self.rehearsal.report
            meter.begin(label)
            self.mark = (len(report.batches), len(report.warnings))
            self.open = {"phase": self.phase.name, "migration": label, "direction": self.direction,
                         "stage": str(migration_stage(migration)), "status": "ok", "object": migration}
        elif action in ("apply_success", "unapply_success") and self.open is not None:
            self._close()

    def _close(self):
        report = self.rehearsal.report
        record = self.open
        record["measurement"] = self.rehearsal.meter.end(report.batches[self.mark[0]:])
        record["warnings"] = report.warnings[self.mark[1]:]
        self.phase.steps.append(record)
        self.open = None
        return record

    def fail(self, exc):
        if self.open is None:
            return None
        record = self._close()
        record["status"] = "failed"
        record["error"] = _error_text(exc)
        record["failing_rows"] = self.rehearsal.diagnose(record["object"], self.direction == "backwards")
        return record


def _error_text(exc):
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _jsonable(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def _file_of(migration):
    from .lint_scan import migration_file

    return migration_file(migration)


def _requirements(f, connection, current_type):
    out = []
    if not f.null and not f.primary_key:
        out.append(Requirement("not_null"))
    kind = f.get_internal_type()
    if kind in _INTEGER_TYPES:
        low, high = connection.ops.integer_field_range(kind)
        if low is not None and high is not None:
            out.append(Requirement("range", (low, high)))
    elif kind == "DecimalField" and f.max_digits is not None:
        out.append(Requirement("digits", f.max_digits - f.decimal_places))
    elif getattr(f, "max_length", None) and kind in rollout._TEXT:
        out.append(Requirement("max_length", f.max_length))
    else:
        target = f.db_type(connection)
        if target and connection.pg_version >= 160000 and _type_differs(current_type, target):
            out.append(Requirement("type", target))
    return out


def _type_differs(current, target):
    aliases = {"character varying": "varchar", "timestamp with time zone": "timestamptz", "double precision":
               "double precision", "boolean": "boolean"}
    normal = current
    for long, short in aliases.items():
        normal = normal.replace(long, short)
    return normal.replace(" ", "") != target.replace(" ", "")


def _step_entry(record, factor_map, memory):
    measured = record["measurement"]
    predicted = estimates.estimate_step(measured, factor_map, memory)
    statements = []
    for stat in sorted(measured.statements.values(), key=lambda s: -s.seconds):
        estimate = predicted["statements"][id(stat)]
        statements.append({
            "sql": stat.sql if len(stat.sql) <= 300 else stat.sql[:297] + "...", "table": estimate.table,
            "kind": estimate.kind, "count": stat.count, "seconds": round(stat.seconds, 4),
            "max_seconds": round(stat.max_seconds, 4), "predicted_seconds": round(estimate.seconds, 4),
            "basis": estimate.basis, "rows": stat.rows, "wal_bytes": stat.wal_bytes,
            "expected_lock": stat.lock, "declared": stat.declared,
            "locks_taken": sorted(f"{mode_name(m)} on {r}" for r, m in stat.locks),
            "rewritten_into_others": stat.container, "error": stat.error})
    batches = [batch[1] for batch in measured.batches]
    backfill = None
    model = predicted["backfill"]
    if batches and model:
        backfill = {"batches": len(batches), "rows": sum(batch[2] for batch in measured.batches),
                    "seconds": round(sum(batches), 3), "p50_ms": round(_percentile(batches, 50) * 1000, 1),
                    "p95_ms": round(_percentile(batches, 95) * 1000, 1), "table": model["table"],
                    "predicted_rows": model["rows"], "predicted_batches": model["batches"],
                    "predicted_seconds": round(model["seconds"], 3),
                    "basis": model["basis"] + "; batch sizes adapt to BATCH_TARGET_MS, so p50/p95 stay as measured"}
    return {
        "id": f"{record['phase']}: {record['migration'] or 'rollout'}",
        "phase": record["phase"], "migration": record["migration"], "direction": record["direction"],
        "stage": record.get("stage"), "status": record["status"], "error": record.get("error"),
        "failing_rows": record.get("failing_rows", []), "warnings": record.get("warnings", []),
        "measured": {
            "seconds": round(measured.seconds, 4), "wal_bytes": measured.wal_bytes, "temp_bytes": measured.temp_bytes,
            "rows": {"inserted": measured.rows_inserted, "updated": measured.rows_updated,
                     "deleted": measured.rows_deleted},
            "rewrites": measured.rewrites, "new_relations": measured.new_relations},
        "predicted": {"seconds": round(predicted["seconds"], 3), "basis": predicted["basis"],
                      "wal_bytes": predicted["wal_bytes"], "temp_bytes": predicted["temp_bytes"],
                      "temp_basis": predicted["temp_basis"], "rows": predicted["rows"]},
        "locks": sorted(predicted["holds"], key=lambda h: -h["predicted_ms"]),
        "backfill": backfill,
        "statements": statements,
    }


def mode_name(mode):
    from ..pg.measure import MODE_NAMES

    return MODE_NAMES.get(mode, mode)


def _percentile(values, pct):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]

