"""Lock discipline against a real server: bounded waits, retries, clear failure."""

import threading
import time

import pytest
from django.db import connection, connections

from safemigrate.pg import ddl
from safemigrate.pg.runlock import run_lock
from safemigrate.exceptions import LockTimeoutExhausted
from tests.traffic import Blocker, Traffic
from tests.utils import execute, fill_table

LOCK_TIMEOUT_MS = 200
BOUND = (LOCK_TIMEOUT_MS + 100) / 1000


@pytest.fixture
def filled(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL)')
    fill_table(table_name, 1000, v="i")
    return table_name


def reader(table):
    def work(index, iteration):
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT v FROM "{table}" WHERE id = %s', [iteration % 1000 + 1])
            cursor.fetchone()

    return work


def test_backoff_grows_and_is_capped():
    class Fixed:
        @staticmethod
        def uniform(low, high):
            return 1.0

    delays = [ddl.backoff_seconds(n, base_ms=100, max_ms=1000, jitter=0.5, rng=Fixed) for n in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_jitter_stays_within_bounds():
    for attempt in range(5):
        for _ in range(50):
            delay = ddl.backoff_seconds(attempt, base_ms=100, max_ms=10_000, jitter=0.5)
            assert 0.05 * 2**attempt <= delay <= 0.15 * 2**attempt


def test_run_ddl_retries_behind_a_long_reader_without_stalling_traffic(filled):
    class Record:
        lock_retries = 0

    record = Record()
    with Blocker(filled, hold=1.2) as blocker, Traffic("readers", reader(filled)) as traffic:
        time.sleep(0.2)
        with connection.schema_editor(atomic=False) as editor:
            ddl.run_ddl(
                editor,
                [f'ALTER TABLE "{filled}" ADD COLUMN extra int'],
                table=filled,
                record=record,
                lock_timeout_ms=LOCK_TIMEOUT_MS,
                retries=50,
            )
        time.sleep(0.2)
    result = traffic.result
    assert blocker.holds >= 1 and not blocker.errors
    assert record.lock_retries >= 1, "the blocker should have forced at least one retry"
    assert result.errors == []
    assert result.calls > 50
    assert result.slow(BOUND) == [], str(result)
    assert execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = 'extra'", [filled]
    )


def test_plain_alter_stalls_traffic_behind_the_same_reader(filled):
    """The contrast: the same ALTER without a lock_timeout queues and blocks readers."""
    with Blocker(filled, hold=1.2), Traffic("readers", reader(filled)) as traffic:
        time.sleep(0.2)
        execute(f'ALTER TABLE "{filled}" ADD COLUMN extra int')
        time.sleep(0.1)
    assert traffic.result.worst > 0.5, str(traffic.result)


def test_exhausted_retries_name_the_blocking_session(filled):
    holder = connections.create_connection("default")
    try:
        with holder.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(f'SELECT * FROM "{filled}" LIMIT 1 /* nightly report */')
            with connection.schema_editor(atomic=False) as editor:
                with pytest.raises(LockTimeoutExhausted) as caught:
                    ddl.run_ddl(
                        editor,
                        [f'ALTER TABLE "{filled}" ADD COLUMN extra int'],
                        table=filled,
                        lock_timeout_ms=50,
                        retries=2,
                        sleep=lambda s: None,
                    )
            cursor.execute("ROLLBACK")
    finally:
        holder.close()
    message = str(caught.value)
    assert "nightly report" in message
    assert "AccessShareLock" in message
    assert caught.value.attempts == 3
    # Nothing changed: the column was not added.
    assert not execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = 'extra'", [filled]
    )


def test_non_lock_errors_are_not_retried(filled):
    calls = []
    with connection.schema_editor(atomic=False) as editor:
        with pytest.raises(Exception) as caught:
            ddl.run_ddl(
                editor,
                [f'ALTER TABLE "{filled}" ADD COLUMN v int'],
                table=filled,
                sleep=calls.append,
            )
    assert "already exists" in str(caught.value)
    assert calls == []


def test_run_ddl_restores_timeouts_inside_an_atomic_block(filled):
    with connection.schema_editor(atomic=True) as editor:
        ddl.run_ddl(editor, [f'ALTER TABLE "{filled}" ADD COLUMN extra int'], table=filled)
        assert execute("SHOW lock_timeout")[0][0] == "0"
        assert execute("SHOW statement_timeout")[0][0] == "0"


def test_collect_sql_shows_the_guarded_statements(filled):
    with connection.schema_editor(atomic=False, collect_sql=True) as editor:
        ddl.run_ddl(editor, [f'ALTER TABLE "{filled}" ADD COLUMN extra int'], table=filled)
    text = "\n".join(editor.collected_sql)
    assert "lock_timeout = 200ms" in text
    assert f'ALTER TABLE "{filled}" ADD COLUMN extra int;' in text


def test_advisory_lock_serializes_runs(transactional_db):
    order = []
    first_holds = threading.Event()
    messages = []

    def first():
        with run_lock(connection):
            order.append("first-start")
            first_holds.set()
            time.sleep(0.5)
            order.append("first-end")
        connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    first_holds.wait(5)
    with run_lock(connection, echo=messages.append):
        order.append("second")
    thread.join()
    assert order == ["first-start", "first-end", "second"]
    assert messages and "waiting" in messages[0]


def _source(name):
    return execute("SELECT source FROM pg_settings WHERE name = %s", [name])[0][0]


def test_run_unbounded_sets_nothing_when_the_timeouts_are_already_off(filled):
    connection.close()
    with connection.schema_editor(atomic=False) as editor:
        ddl.run_unbounded(editor, f'CREATE INDEX CONCURRENTLY "{filled}_v" ON "{filled}" (v)')
    assert _source("lock_timeout") != "session" and _source("statement_timeout") != "session"
    assert execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [f"{filled}_v"]) == [(True,)]


def test_run_unbounded_switches_timeouts_off_on_a_direct_connection_and_restores_them(filled):
    execute("SET statement_timeout = '1ms'")
    execute("SET lock_timeout = '7s'")
    with connection.schema_editor(atomic=False) as editor:
        # 1 ms would cancel this build; it runs without the timeout.
        ddl.run_unbounded(editor, f'CREATE INDEX CONCURRENTLY "{filled}_v" ON "{filled}" (v, id)')
    assert execute("SHOW statement_timeout") == [("1ms",)]
    assert execute("SHOW lock_timeout") == [("7s",)]
    execute("RESET statement_timeout")
    execute("RESET lock_timeout")
    assert execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass", [f"{filled}_v"]) == [(True,)]


def test_a_direct_connection_is_recognised_as_direct(transactional_db):
    from safemigrate.pg.session import is_direct

    assert is_direct(connection) is True
