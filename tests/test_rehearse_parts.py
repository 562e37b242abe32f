"""The parts of ``manage.py rehearse`` one at a time: scratch ownership, pg_dump choice, plan, estimates, settings."""

import glob
import json
import os
import uuid

import psycopg
import pytest
from django.db import connections, migrations, models
from django.db.migrations.graph import MigrationGraph

from safemigrate import operations as safe
from safemigrate.pg import schema_dump, scratch
from safemigrate.pg.connect import settings_from_url
from safemigrate.pg.measure import Hold, StatementRecord, StepMeasurement
from safemigrate.pg.table_stats import TableSize
from safemigrate.planning import estimates, rehearsal_plan
from tests.scratch_project import server_url


@pytest.fixture
def unblocked(django_db_blocker):
    with django_db_blocker.unblock():
        yield


def _exists(name):
    with psycopg.connect(server_url("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()[0] == 1


def test_the_cleanup_drops_only_scratch_databases_whose_owner_is_gone(unblocked):
    settings = dict(connections["default"].settings_dict)
    live = f"{scratch.PREFIX}1_1_{uuid.uuid4().hex[:6]}"
    dead = f"{scratch.PREFIX}2_2_{uuid.uuid4().hex[:6]}"
    kept = f"{scratch.KEPT_PREFIX}3_3_{uuid.uuid4().hex[:6]}"
    owner = psycopg.connect(server_url("postgres"), autocommit=True)
    try:
        owner.execute("SELECT pg_advisory_lock(%s, %s)", [scratch.LOCK_CLASS, scratch.lock_key(live)])
        for name in (live, dead, kept):
            owner.execute(f'CREATE DATABASE "{name}"')
        dropped = scratch.drop_stale(settings)
        # The dead one is gone: dropped here, or by a rehearsal another test worker started meanwhile
        # (every rehearsal cleans up first), which is the same cleanup at work.
        assert live not in dropped and kept not in dropped
        assert _exists(live) and not _exists(dead) and _exists(kept)
        owner.close()  # the owner dies: its session, and the lock, end with it
        for _ in range(50):
            if live in scratch.drop_stale(settings):
                break
        assert not _exists(live)
    finally:
        with psycopg.connect(server_url("postgres"), autocommit=True) as conn:
            for name in (live, dead, kept):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_scratch_database_records_its_owner_and_is_dropped(unblocked):
    settings = dict(connections["default"].settings_dict)
    made = scratch.empty(settings, source=settings["NAME"])
    try:
        assert made.name.startswith(scratch.PREFIX) and made.kind == "sample"
        with psycopg.connect(server_url("postgres"), autocommit=True) as conn:
            comment = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                   "WHERE datname = %s", [made.name]).fetchone()[0]
        assert comment.startswith("safemigrate rehearse scratch database; owner {\"pid\": ")
        owner = json.loads(comment.split("owner ", 1)[1])
        assert owner["pid"] == os.getpid() and owner["source"] == settings["NAME"]
        assert made.name not in scratch.drop_stale(settings), "a live rehearsal's database was dropped"
    finally:
        scratch.drop(made)
    assert not _exists(made.name)


def test_pg_dump_must_be_at_least_as_new_as_the_server():
    old = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    if not old:
        pytest.skip("no Debian pg_dump here")
    major = schema_dump.pg_dump_version(old[0])
    path, why = schema_dump.find_pg_dump(old[0], (major + 1) * 10000)
    assert path is None and f"version {major}, older than the server's {major + 1}" in why
    path, why = schema_dump.find_pg_dump(old[0], major * 10000)
    assert path == old[0]
    assert schema_dump.find_pg_dump(False, 180000) == (None, "SAFEMIGRATE['REHEARSE_PG_DUMP'] is False")


def test_a_dump_is_restorable_without_meta_commands_and_unknown_settings():
    text = "\\restrict abc\nSET transaction_timeout = 0;\nSET lock_timeout = 0;\nCREATE TABLE t (id int);\n\\unrestrict abc"
    assert schema_dump.restorable(text, {"lock_timeout"}) == "SET lock_timeout = 0;\nCREATE TABLE t (id int);"


def test_a_clone_url_becomes_database_settings():
    base = {"ENGINE": "django.db.backends.postgresql", "NAME": "prod", "USER": "u", "PASSWORD": "p", "HOST": "h",
            "PORT": "5432", "OPTIONS": {"pool": True, "sslmode": "require"}, "TIME_ZONE": None}
    settings = settings_from_url("postgresql://clone%40x:s3cret@clone.example:6543/scratch_1?sslmode=verify-full",
                                 base)
    assert (settings["NAME"], settings["USER"], settings["PASSWORD"], settings["HOST"], settings["PORT"]) == (
        "scratch_1", "clone@x", "s3cret", "clone.example", "6543")
    assert settings["OPTIONS"] == {"pool": True, "sslmode": "verify-full"}
    socket = settings_from_url("postgresql://postgres@/db?host=/tmp/sock", base)
    assert socket["HOST"] == "/tmp/sock" and "host" not in socket["OPTIONS"]


def _graph(expand_ops, contract_ops):
    graph = MigrationGraph()
    first = migrations.Migration("0001_initial", "app")
    expand = migrations.Migration("0002_expand", "app")
    expand.operations = expand_ops
    contract = migrations.Migration("0003_contract", "app")
    contract.operations = contract_ops
    contract.stage = "contract"
    for migration in (first, expand, contract):
        graph.add_node(("app", migration.name), migration)
    graph.add_dependency(None, ("app", "0002_expand"), ("app", "0001_initial"))
    graph.add_dependency(None, ("app", "0003_contract"), ("app", "0002_expand"))
    return graph


def test_the_rollback_starts_where_the_release_can_still_be_reversed():
    add = migrations.AddField("item", "x", models.IntegerField(null=True))
    graph = _graph([add], [safe.DropColumn("item", "legacy")])
    release = rehearsal_plan.release_of(graph, {("app", "0001_initial")})
    assert release.keys == [("app", "0002_expand"), ("app", "0003_contract")]
    assert release.rollback_targets == [("app", "0001_initial")]
    assert release.old_nodes == [("app", "0001_initial")] and release.new_nodes == [("app", "0003_contract")]
    point, why = rehearsal_plan.rollback_point(graph, release)
    assert point == "expand" and "the contract cannot be reversed (app.0003_contract: " in why
    graph = _graph([migrations.RunPython(lambda apps, schema_editor: None)], [safe.DropColumn("item", "legacy")])
    point, why = rehearsal_plan.rollback_point(graph, rehearsal_plan.release_of(graph, {("app", "0001_initial")}))
    assert point is None and why.startswith("the rollback was not rehearsed: the release cannot be reversed")
    graph = _graph([add], [migrations.RunSQL("SELECT 1", reverse_sql="SELECT 1")])
    assert rehearsal_plan.rollback_point(graph, rehearsal_plan.release_of(graph, {("app", "0001_initial")}))[0] == \
        "contract"
    with pytest.raises(rehearsal_plan.NothingToRehearse):
        rehearsal_plan.release_of(graph, set(graph.nodes))


def _step(statements, batches=(), new_relations=(), seconds=None):
    step = StepMeasurement("x", started=0.0)
    for record in statements:
        step.statements[record.sql] = record
    step.ended = seconds if seconds is not None else sum(r.seconds for r in statements)
    step.batches = list(batches)
    step.new_relations = list(new_relations)
    return step


FACTORS = {"big": estimates.Factor("big", 1_000_000, 10_000, "reltuples")}


def _record(sql, seconds, table="big", count=1):
    return StatementRecord(sql, table, "", count=count, seconds=seconds, spans=[(0.0, seconds)])


def test_index_builds_scale_n_log_n_row_work_linearly_and_catalog_changes_not_at_all():
    build = _record('CREATE INDEX CONCURRENTLY "i" ON "big" ("x")', 1.0)
    update = _record('UPDATE "big" SET "y" = 1', 1.0)
    rename = _record('ALTER TABLE "big" RENAME COLUMN "a" TO "b"', 0.01)
    new = _record('UPDATE "fresh" SET "y" = 1', 0.5, table="fresh")
    predicted = estimates.estimate_step(_step([build, update, rename, new]), FACTORS, {})
    by_sql = {record.sql: e for record, e in ((r, predicted["statements"][id(r)]) for r in (build, update, rename, new))}
    nlogn = (1_000_000 * 13.8155) / (10_000 * 9.2103)
    assert by_sql[build.sql].kind == "index build" and abs(by_sql[build.sql].seconds - nlogn) < 0.01
    assert by_sql[update.sql].kind == "linear" and by_sql[update.sql].seconds == pytest.approx(100.0)
    assert by_sql[rename.sql].kind == "catalog" and by_sql[rename.sql].seconds == pytest.approx(0.01)
    assert by_sql[new.sql].seconds == pytest.approx(0.5) and "the release creates" in by_sql[new.sql].basis
    assert "n·log n" in by_sql[build.sql].basis and "1,000,000 rows (reltuples) / 10,000 rehearsed" in \
        by_sql[build.sql].basis
    assert predicted["seconds"] == pytest.approx(nlogn + 100.0 + 0.01 + 0.5, rel=1e-3)


def test_a_type_change_that_rewrote_the_table_scales_and_one_that_did_not_stays():
    alter = _record('ALTER TABLE "big" ALTER COLUMN "x" TYPE bigint', 2.0)
    step = _step([alter])
    assert estimates.estimate_step(step, FACTORS, {})["seconds"] == pytest.approx(2.0)
    step.rewrites = [{"relation": "big", "kind": "table", "table": "big", "bytes_before": 1, "bytes_after": 2}]
    assert estimates.estimate_step(step, FACTORS, {})["seconds"] == pytest.approx(200.0)


def test_a_backfill_takes_its_ramp_up_as_measured_and_the_rest_at_the_steady_rate():
    # 4 batches: two small ramp-up batches, then two at 1000 rows per 0.1 s.
    batches = [("b", 0.05, 100, 0.05), ("b", 0.08, 400, 0.13), ("b", 0.1, 1000, 0.23), ("b", 0.1, 1000, 0.33)]
    update = _record('UPDATE "big" SET "y" = 1 WHERE "id" > %s', 0.33, count=4)
    update.spans = [(0.0, 0.05), (0.05, 0.13), (0.13, 0.23), (0.23, 0.33)]
    check = _record("SELECT 1 FROM pg_stat_replication", 0.04, table=None, count=1)
    check.spans = [(0.33, 0.37)]  # after the batches: catalog work, as measured
    step = _step([update, check], batches=batches, seconds=0.37)
    model = estimates.backfill_model(step, {"big"}, FACTORS)
    rows = 2500 * 100
    assert model["rows"] == rows and model["seconds"] == pytest.approx(0.13 + (rows - 500) / 10_000)
    assert "steady 10,000 rows/s" in model["basis"]
    predicted = estimates.estimate_step(step, FACTORS, {})
    assert predicted["seconds"] == pytest.approx(model["seconds"] + 0.04, rel=1e-6)
    # Time between batches grows with their number.
    pause = _record("SELECT 1 FROM pg_stat_replication WHERE true", 0.0, table=None)
    step.batches = [("b", 0.05, 100, 0.05), ("b", 0.08, 400, 0.23), ("b", 0.1, 1000, 0.33), ("b", 0.1, 1000, 0.43)]
    step.ended = 0.47
    step.statements[pause.sql] = pause
    spaced = estimates.estimate_step(step, FACTORS, {})
    assert spaced["seconds"] == pytest.approx(model["seconds"] + 0.1 * model["batches"] / 4 + 0.04, rel=1e-3)


def test_a_lock_hold_grows_with_the_statements_it_covered():
    alter = _record('ALTER TABLE "big" ALTER COLUMN "x" TYPE bigint', 1.0)
    step = _step([alter])
    step.rewrites = [{"relation": "big", "kind": "table", "table": "big", "bytes_before": 1, "bytes_after": 2}]
    step.holds = [Hold(1, "big", "AccessExclusiveLock", 0.0, 1.0, resolution=0.005)]
    (hold,) = estimates.estimate_step(step, FACTORS, {})["holds"]
    assert hold["blocking"] and hold["mode"] == "ACCESS EXCLUSIVE"
    assert hold["measured_ms"] == pytest.approx(1005.0) and hold["predicted_ms"] == pytest.approx(100005.0)


def test_an_index_sort_spills_only_past_maintenance_work_mem():
    build = _record('CREATE INDEX "i" ON "big" ("x")', 1.0)
    step = _step([build], new_relations=[{"relation": "i", "kind": "index", "table": "big", "bytes": 1 << 20}])
    small = estimates.estimate_step(step, FACTORS, {"maintenance_work_mem": 1 << 30})
    assert small["temp_bytes"] == 0 and "fits in maintenance_work_mem" in small["temp_basis"]
    large = estimates.estimate_step(step, FACTORS, {"maintenance_work_mem": 64 << 20})
    assert large["temp_bytes"] == 100 << 20 and "spills about that much" in large["temp_basis"]


def test_factors_come_from_reltuples_or_from_bytes_per_row():
    source = {"a": TableSize(5_000_000, 0, 0, True), "b": TableSize(0, 800 << 20, 0, False)}
    here = {"a": TableSize(50_000, 0, 0, True), "b": TableSize(10_000, 8 << 20, 0, True)}
    found = estimates.factors(source, {"a": 50_000, "b": 10_000}, here)
    assert found["a"].linear == 100 and found["a"].basis == "reltuples"
    assert found["b"].source_rows == pytest.approx(1_000_000) and found["b"].basis.startswith("never analysed")


@pytest.mark.parametrize("key, value", [
    ("REHEARSE_MAX_LOCK_HOLD_MS", 0), ("REHEARSE_MAX_EXPAND_S", "10"), ("REHEARSE_MAX_BACKFILL_S", -1),
    ("REHEARSE_CLONE_COMMAND", "clone {name}"), ("REHEARSE_DROP_COMMAND", []), ("REHEARSE_PG_DUMP", True),
])
def test_bad_rehearse_settings_are_reported(key, value, settings):
    from safemigrate.checks import check_settings

    settings.SAFEMIGRATE = {key: value}
    errors = check_settings()
    assert [error.id for error in errors] == ["safemigrate.E003"] and key in errors[0].msg
    settings.SAFEMIGRATE = {"REHEARSE_MAX_LOCK_HOLD_MS": 2000, "REHEARSE_CLONE_COMMAND": ["clone", "{name}"],
                            "REHEARSE_PG_DUMP": False}
    assert check_settings() == []


def test_an_index_build_scales_its_sort_n_log_n_its_scans_linearly_and_its_waits_not_at_all():
    build = _record('CREATE INDEX CONCURRENTLY "i" ON "big" ("x")', 1.0)
    step = _step([build])
    step.index_phases = [("waiting for writers before build", 0.0, 0.1), ("building index: scanning table", 0.1, 0.4),
                         ("building index: sorting live tuples", 0.4, 0.6),
                         ("building index: loading tuples in tree", 0.6, 0.8), ("waiting for old snapshots", 0.8, 0.9)]
    estimate = estimates.estimate_step(step, FACTORS, {})["statements"][id(build)]
    factor = FACTORS["big"]
    # The last 0.1 s, with no build phase in progress (CONCURRENTLY committing), does not grow: as measured.
    expected = 0.2 * factor.nlogn + 0.5 * factor.linear + 0.2 + 0.1
    assert estimate.kind == "index build" and estimate.seconds == pytest.approx(expected)
    assert "sorting 0.20 s x" in estimate.basis and "scanning and loading 0.50 s x100.0 (linear)" in estimate.basis
    assert "waiting and committing 0.30 s as measured (0.10 s of it with no build phase" in estimate.basis


def test_the_sampler_bounds_each_build_phase_halfway_to_the_samples_around_it():
    """Bounds from the samples' real gaps: a sampler starved of CPU sees phases late, not shorter."""
    from safemigrate.pg.measure import LockSampler

    sampler = LockSampler.__new__(LockSampler)
    sampler.phases, sampler._previous = [], None
    for now, phase in [(0.0, None), (0.1, "building index: scanning table"), (0.2, "building index: scanning table"),
                       (0.6, "building index: sorting live tuples"), (0.7, None), (0.8, None),
                       (1.0, "waiting for old snapshots")]:
        sampler._phase(phase, now)
    assert [tuple(p[:3]) for p in sampler.phases] == [
        ("building index: scanning table", pytest.approx(0.05), pytest.approx(0.4)),
        ("building index: sorting live tuples", pytest.approx(0.4), pytest.approx(0.65)),
        ("waiting for old snapshots", pytest.approx(0.9), 1.0)]


def test_a_declared_statement_is_classed_by_its_declaration_and_other_sql_by_the_classifier():
    from safemigrate.pg import sql

    set_not_null = sql.set_not_null("big", "x")  # declared: only run once a validated CHECK proves it
    declared = _record(set_not_null.sql, 0.01)
    declared.statement, declared.declared = set_not_null, True
    undeclared = _record(set_not_null.sql + " ", 0.01)  # Django's or RunSQL's: PostgreSQL scans the table
    build = sql.create_index_concurrently(sql.index_definition("big", "big_x", ["x"]), "big_x", "big")
    built = _record(build.sql, 1.0)
    built.statement, built.declared = build, True
    rewrite = sql.change_type_rewriting("big", "x", "int", 1000)
    rewritten = _record(rewrite.sql + "  ", 1.0)
    rewritten.statement, rewritten.declared = rewrite, True
    predicted = estimates.estimate_step(_step([declared, undeclared, built, rewritten]), FACTORS, {})["statements"]
    assert predicted[id(declared)].kind == "catalog" and predicted[id(declared)].seconds == pytest.approx(0.01)
    assert predicted[id(undeclared)].kind == "linear" and predicted[id(undeclared)].seconds == pytest.approx(1.0)
    assert predicted[id(built)].kind == "index build"
    assert predicted[id(rewritten)].kind == "linear"


def test_the_trace_reads_the_lock_the_runner_declared_and_classifies_the_rest(table_name):
    from django.db import connection

    from safemigrate.pg import sql
    from safemigrate.pg.classify import classify
    from safemigrate.pg.measure import Tracer
    from safemigrate.pg.runner import run
    from tests.utils import execute

    execute(f'CREATE TABLE "{table_name}" (id bigint PRIMARY KEY, v int)')
    add = sql.add_column(table_name, "w", "int")
    build = sql.create_index_concurrently(sql.index_definition(table_name, f"{table_name}_w", ["w"]),
                                          f"{table_name}_w", table_name)
    tracer = Tracer(connection)
    tracer.step = StepMeasurement("x")
    raw = f'ALTER TABLE "{table_name}" ADD COLUMN "z" int'
    with connection.execute_wrapper(tracer):
        with connection.schema_editor(atomic=False) as editor:
            run(editor, [add, build], label="test")
        with connection.cursor() as cursor:
            cursor.execute(raw)
    records = tracer.step.statements
    assert records[add.sql].statement is add and records[add.sql].declared
    assert records[add.sql].lock == add.describe() and records[add.sql].table == table_name
    assert (table_name, "AccessExclusiveLock") in records[add.sql].locks
    assert records[build.sql].statement is build and records[build.sql].lock == build.describe()
    assert records[raw].statement is None and not records[raw].declared
    assert records[raw].lock == classify(raw).describe() and records[raw].table == table_name


# -- short index builds timed again (planning.rebuilds) -------------------------------------


def test_a_short_build_is_scaled_at_the_fastest_of_three_runs_not_at_its_own():
    """One slow sample build (1.0 s against 0.6 and 0.7 s run again) is not multiplied a hundredfold."""
    build = _record('CREATE INDEX CONCURRENTLY "i" ON "big" ("x")', 1.0)
    build.repeats = [0.6, 0.7]
    step = _step([build])
    step.index_phases = [("building index: scanning table", 0.0, 0.5), ("building index: sorting live tuples", 0.5, 0.9)]
    estimate = estimates.estimate_step(step, FACTORS, {})["statements"][id(build)]
    factor = FACTORS["big"]
    # Work (0.5 s scanning, 0.4 s sorting) at x0.6; the 0.1 s with no phase in progress as measured.
    assert estimate.seconds == pytest.approx(0.4 * 0.6 * factor.nlogn + 0.5 * 0.6 * factor.linear + 0.1)
    assert "built 3 times on the copy (1.000, 0.600, 0.700 s)" in estimate.basis and "x0.60" in estimate.basis
    # Without phase samples the whole build scales n·log n, at the fastest run: its own when the others are slower.
    plain = _record('CREATE INDEX "j" ON "big" ("x")', 1.0)
    plain.repeats = [1.2, 1.5]
    unphased = estimates.estimate_step(_step([plain]), FACTORS, {})["statements"][id(plain)]
    assert unphased.seconds == pytest.approx(factor.nlogn) and "x1.00" in unphased.basis
    plain.repeats = [0.8, 1.5]
    unphased = estimates.estimate_step(_step([plain]), FACTORS, {})["statements"][id(plain)]
    assert unphased.seconds == pytest.approx(0.8 * factor.nlogn) and "x0.80" in unphased.basis
    # Timed once: as before.
    once = _record('CREATE INDEX "k" ON "big" ("x")', 1.0)
    assert estimates.estimate_step(_step([once]), FACTORS, {})["statements"][id(once)].seconds == \
        pytest.approx(factor.nlogn)


def test_the_index_a_statement_builds_is_read_from_its_declaration_or_its_text():
    from safemigrate.pg import sql
    from safemigrate.planning.rebuilds import built_index

    declared = sql.create_index_concurrently(sql.index_definition("big", "big_x", ["x"]), "big_x", "big")
    record = _record(declared.sql, 1.0)
    record.statement = declared
    assert built_index(record) == "big_x"
    assert built_index(_record('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "A ""b" ON "big" ("x")', 1)) == 'A "b'
    assert built_index(_record("CREATE INDEX plain_name ON big (x)", 1)) == "plain_name"
    assert built_index(_record("CREATE INDEX Mixed_Name ON big (x)", 1)) == "mixed_name"  # folded, as PostgreSQL does
    assert built_index(_record('ALTER TABLE "big" ADD CONSTRAINT "big_u" UNIQUE ("x")', 1)) == "big_u"
    assert built_index(_record('ALTER TABLE "big" ADD CONSTRAINT "big_c" CHECK ("x" > 0)', 1)) is None
    assert built_index(_record('UPDATE "big" SET "x" = 1', 1)) is None


def test_builds_are_timed_again_the_same_way_and_leave_nothing_behind(table_name):
    from django.db import connection

    from safemigrate.planning.rebuilds import time_again
    from tests.utils import execute, fill_table

    execute(f'CREATE TABLE "{table_name}" (id bigint PRIMARY KEY, v int, w text)')
    fill_table(table_name, 20_000, id="i", v="i %% 97", w="'w' || i")
    execute(f'CREATE INDEX "{table_name}_v" ON "{table_name}" (v DESC) WHERE w <> \'x\'')
    execute(f'ALTER TABLE "{table_name}" ADD CONSTRAINT "{table_name}_w" UNIQUE (w)')
    before = execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1",
                     [table_name])
    concurrent = _record(f'CREATE INDEX CONCURRENTLY "{table_name}_v" ON "{table_name}" (v DESC) WHERE w <> \'x\'',
                         0.05, table=table_name)
    unique = _record(f'ALTER TABLE "{table_name}" ADD CONSTRAINT "{table_name}_w" UNIQUE ("w")', 0.05,
                     table=table_name)
    long = _record(f'CREATE INDEX "{table_name}_v" ON "{table_name}" (v)', 30.0, table=table_name)
    gone = _record('CREATE INDEX "no_such_index" ON "x" (y)', 0.05, table="x")
    step = _step([concurrent, unique, long, gone])
    assert time_again(connection, [step]) == 2
    assert len(concurrent.repeats) == 2 and all(t > 0 for t in concurrent.repeats)
    assert len(unique.repeats) == 2 and all(t > 0 for t in unique.repeats)
    assert long.repeats == [] and gone.repeats == []
    assert execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1",
                   [table_name]) == before


def test_only_builds_on_the_sampled_tables_are_timed_again(table_name):
    from django.db import connection

    from safemigrate.planning.rebuilds import time_again
    from tests.utils import execute

    execute(f'CREATE TABLE "{table_name}" (id bigint PRIMARY KEY, v int)')
    execute(f'CREATE INDEX "{table_name}_v" ON "{table_name}" (v)')
    build = _record(f'CREATE INDEX "{table_name}_v" ON "{table_name}" (v)', 0.05, table=table_name)
    assert time_again(connection, [_step([build])], tables={"some_other_table"}) == 0 and build.repeats == []
    assert time_again(connection, [_step([build])], tables={table_name}) == 1 and len(build.repeats) == 2
