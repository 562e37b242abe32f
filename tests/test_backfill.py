"""The batched backfill engine and its operations against the real server."""

import threading
import time

import pytest
from django.db import connection, connections, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.test import override_settings

from safemigrate.pg import backfill
from safemigrate.exceptions import MissingPrimaryKeyError
from safemigrate.pg import replica_lag
from safemigrate.operations import Backfill, RunPythonBatched
from safemigrate.pg.reporting import Report, collecting
from tests.traffic import Blocker, Traffic
from tests.utils import apply_operations, execute, fill_table, unapply_operations, version_of_model

SMALL_BATCHES = {"BATCH_INITIAL_SIZE": 100, "BATCH_MIN_SIZE": 50, "BATCH_MAX_SIZE": 500}


@pytest.fixture
def numbers(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, label text)')
    fill_table(table_name, 5000, v="i", label="'l' || i")
    return table_name


def state_for(table):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Item",
        [("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
         ("label", models.TextField(null=True))],
        options={"db_table": table},
    ))
    return state


class Killed(Exception):
    pass


def test_every_target_row_is_updated_exactly_once_in_many_batches(numbers):
    with override_settings(SAFEMIGRATE=SMALL_BATCHES):
        result = backfill.backfill_table(connection, numbers, set_sql='"v" = "v" * 10', where_sql='mod("v", 3) = 0')
    assert result.batches >= 10
    assert result.rows == 5000 // 3
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE v % 30 = 0 AND v >= 30') == [(5000 // 3,)]
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE id % 3 <> 0 AND v <> id') == [(0,)]


def test_killed_run_resumes_after_the_last_committed_batch_and_rerun_is_noop(numbers):
    calls = {"n": 0}

    def dying_sleep(seconds):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed()

    with override_settings(SAFEMIGRATE=SMALL_BATCHES):
        with pytest.raises(Killed):
            backfill.backfill_table(connection, numbers, set_sql='"v" = "v" + 1', pause_ms=1,
                                    progress_name="resume-test", sleep=dying_sleep)
        partial = backfill.progress_of(connection, "resume-test")
        assert 0 < partial["rows"] < 5000 and not partial["done"]
        resumed = backfill.backfill_table(connection, numbers, set_sql='"v" = "v" + 1', progress_name="resume-test")
        assert resumed.resumed and resumed.rows == 5000 - partial["rows"]
        # "v + 1" is not idempotent: every row was incremented exactly once.
        assert execute(f'SELECT count(*) FROM "{numbers}" WHERE v <> id + 1') == [(0,)]
        again = backfill.backfill_table(connection, numbers, set_sql='"v" = "v" + 1', progress_name="resume-test")
    assert again.already_done and again.rows == 0
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE v <> id + 1') == [(0,)]


def test_terminates_while_rows_are_inserted_continuously(numbers):
    stop = threading.Event()

    def insert_forever():
        try:
            while not stop.is_set():
                with connection.cursor() as cursor:
                    cursor.execute(f'INSERT INTO "{numbers}" (v) SELECT -1 FROM generate_series(1, 50)')
        finally:
            connections.close_all()

    inserter = threading.Thread(target=insert_forever, daemon=True)
    inserter.start()
    try:
        time.sleep(0.1)
        with override_settings(SAFEMIGRATE=SMALL_BATCHES):
            result = backfill.backfill_table(connection, numbers, set_sql='"label" = %s', params=["done"],
                                             where_sql='"v" > 0')
    finally:
        stop.set()
        inserter.join(10)
    assert result.rows == 5000
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE v > 0 AND label <> %s', ["done"]) == [(0,)]
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE v = -1')[0][0] > 0


def test_table_without_a_primary_key_gets_a_clear_error_and_key_fallback(table_name):
    execute(f'CREATE TABLE "{table_name}" (code int NOT NULL UNIQUE, v int)')
    fill_table(table_name, 100, code="i", v="0")
    with pytest.raises(MissingPrimaryKeyError, match="no primary key.*key="):
        backfill.backfill_table(connection, table_name, set_sql='"v" = 1')
    assert execute(f'SELECT count(*) FROM "{table_name}" WHERE v = 1') == [(0,)]
    result = backfill.backfill_table(connection, table_name, set_sql='"v" = 1', key="code")
    assert result.rows == 100


def test_waits_while_replicas_lag(numbers, monkeypatch):
    lags = iter([50_000.0, 20_000.0, 0.0])
    monkeypatch.setattr(replica_lag, "replica_lag_ms", lambda conn, *clock: next(lags, 0.0))
    slept = []
    result = backfill.backfill_table(connection, numbers, set_sql='"v" = 0', sleep=slept.append)
    assert result.lag_waits == 2 and slept[:2] == [1.0, 1.0]
    assert replica_lag.replica_lag_ms(connection, replica_lag.LagClock(connection)) == 0  # no replicas here


def test_backfill_operation_reports_and_reverses(numbers):
    state = state_for(numbers)
    op = Backfill("item", set={"label": "upper(label)"}, where="v <= 100", reverse_set={"label": "lower(label)"})
    lines = []
    report = Report(echo=lines.append)
    with override_settings(SAFEMIGRATE=SMALL_BATCHES), collecting(report):
        apply_operations([op], state)
        apply_operations([op], state)  # finished: a no-op
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE label LIKE %s', ["L%"]) == [(100,)]
    assert report.steps[0].rows == 100 and report.steps[1].skipped
    assert "100 rows" in lines[0]
    unapply_operations([op], state)
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE label LIKE %s', ["L%"]) == [(0,)]
    # After a reverse, applying again does the work again.
    apply_operations([op], state)
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE label LIKE %s', ["L%"]) == [(100,)]
    migration = type("Migration", (migrations.Migration,), {"operations": [op]})("0002_x", "shop")
    source = MigrationWriter(migration).as_string()
    assert "safemigrate.operations.Backfill(" in source and "reverse_set" in source
    _, sql = apply_operations([op], state, collect_sql=True)
    assert any("keyset batches" in line for line in sql)


def shout(apps, rows):
    Item = apps.get_model("shop", "Item")
    for row in rows:
        row.label = row.label.upper()
    Item.objects.bulk_update(rows, ["label"])


def whisper(apps, rows):
    for row in rows:
        row.label = row.label.lower()
        row.save(update_fields=["label"])


def test_run_python_batched(numbers):
    state = state_for(numbers)
    op = RunPythonBatched("item", shout, reverse_code=whisper)
    with override_settings(SAFEMIGRATE=SMALL_BATCHES):
        apply_operations([op], state)
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE label = upper(label)') == [(5000,)]
    unapply_operations([op], state)
    assert execute(f'SELECT count(*) FROM "{numbers}" WHERE label = lower(label)') == [(5000,)]
    source = MigrationWriter(type("Migration", (migrations.Migration,), {"operations": [op]})("0002_x", "shop")).as_string()
    assert "tests.test_backfill.shout" in source


@pytest.mark.traffic
def test_backfill_of_100k_rows_under_traffic_and_blocker(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, label text)')
    fill_table(table_name, 100_000, v="i", label="'l' || i")
    Item = version_of_model("Item", {"v": models.IntegerField(), "label": models.TextField(null=True)}, table_name)

    def work(index, iteration):
        if iteration % 2:
            Item.objects.filter(pk=(iteration * 7919 + index) % 100_000 + 1).update(label="traffic")
        else:
            Item.objects.create(v=-iteration, label="new")

    with Blocker(table_name), Traffic("old code", work) as traffic:
        time.sleep(0.2)
        result = backfill.backfill_table(connection, table_name, set_sql='"v" = "v" * 2', where_sql='"v" > 0')
        time.sleep(0.2)
    res = traffic.result
    assert result.rows == 100_000 and res.errors == []
    assert res.slow(0.3) == [], str(res)
    assert execute(f'SELECT count(*) FROM "{table_name}" WHERE v > 0 AND v <> id * 2') == [(0,)]


@pytest.mark.parametrize("verbosity", [1, 0])
def test_progress_lines_show_rate_and_eta_unless_quiet(numbers, monkeypatch, verbosity):
    monkeypatch.setattr(backfill, "PROGRESS_INTERVAL", 0.0)
    lines = []
    with override_settings(SAFEMIGRATE=SMALL_BATCHES), collecting(Report(echo=lines.append, verbosity=verbosity)):
        backfill.backfill_table(connection, numbers, set_sql='"v" = 0')
    progress = [line for line in lines if "ETA" in line]
    if verbosity:
        assert len(progress) >= 5
        assert "/5,000 rows" in progress[-1] and "rows/s" in progress[-1]
    else:
        assert lines == []
