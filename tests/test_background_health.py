"""Each health signal against the real thing: a real VACUUM, a real open transaction, a real queued lock,
real connections, real WAL, a custom check. (The replica signal is in tests/test_replica.py, with the
real streaming replica.)

Each test starts the runner while the condition holds and checks that no batch ran, that the
migration went ``on_hold`` with the signal's reading as its reason, and that once the condition is
cleared (from the runner's own wait, so no timing guesses) the copy resumes by itself and finishes.
"""

import threading
import time

import psycopg
import pytest
from django.db import connection
from django.dispatch import receiver
from django.test import override_settings

from safemigrate.operations import Backfill
from safemigrate.pg import background_state as bg
from safemigrate.pg.background_runner import run_pending
from safemigrate.signals import background_migration_state_changed
from tests.test_background import SMALL, customers  # noqa: F401 (fixture)
from tests.scratch_project import server_url
from tests.utils import apply_operations, execute

#: Every built-in signal off; each test turns on the one it checks.
QUIET = {**SMALL, "BACKGROUND_HOLD_S": 0.3, "MAX_REPLICA_LAG_MS": None, "BACKGROUND_MAX_WAL_BYTES_PER_S": None,
         "BACKGROUND_MAX_TRANSACTION_AGE_S": None, "BACKGROUND_MAX_LOCK_WAITERS": None,
         "BACKGROUND_MAX_CONNECTION_USE": None, "BACKGROUND_PAUSE_DURING_VACUUM": False}


def session():
    return psycopg.connect(server_url(connection.settings_dict["NAME"]), autocommit=True)


@pytest.fixture
def holds():
    seen = []

    @receiver(background_migration_state_changed)
    def record(sender, name, old_state, new_state, reason, snapshot, **kwargs):
        seen.append((new_state, reason, snapshot["rows_done"]))

    yield seen
    background_migration_state_changed.disconnect(record)


@pytest.fixture
def copy(customers):  # noqa: F811
    table, state = customers
    apply_operations([Backfill("customer", set={"points": '"points" + 1'}, name="health", background=True)], state)
    return table


def run_until_clear(settings, clear, holds):
    """Run with ``settings``; ``clear()`` is called at the runner's first wait for a hold to end."""
    cleared = []

    def sleep(seconds):
        if not cleared and any(state == "on_hold" for state, _, _ in holds):
            cleared.append(True)
            clear()
        time.sleep(seconds)

    with override_settings(SAFEMIGRATE={**QUIET, **settings}):
        summary = run_pending(sleep=sleep)
    return summary, cleared


def assert_held_then_finished(holds, summary, table, signal):
    on_hold = [(reason, rows) for state, reason, rows in holds if state == "on_hold"]
    assert on_hold, holds
    reason, rows = on_hold[0]
    assert reason.startswith(f"{signal} ") and " > " in reason, reason
    assert rows == 0  # no batch started while the signal said stop
    assert summary.finished == ["health"]
    assert execute(f'SELECT count(*) FROM "{table}" WHERE points <> id + 1') == [(0,)]
    states = [state for state, _, _ in holds]
    assert states[-1] == "finished" and states.index("on_hold") < states.index("finished")
    return reason


def test_vacuum_on_the_table_holds_the_copy_until_it_ends(copy, holds):
    execute(f'INSERT INTO "{copy}" (name, points) SELECT \'v\' || i, i FROM generate_series(1, 30000) i')
    execute(f'DELETE FROM "{copy}" WHERE name LIKE \'v%%\'')
    vacuum = session()
    pid = vacuum.execute("SELECT pg_backend_pid()").fetchone()[0]

    def slow_vacuum():
        # Cost-based delay makes this VACUUM crawl (a real one, on the real table).
        vacuum.execute("SET vacuum_cost_delay = 100")
        vacuum.execute("SET vacuum_cost_limit = 1")
        try:
            vacuum.execute(f'VACUUM "{copy}"')
        except psycopg.errors.QueryCanceled:
            pass

    thread = threading.Thread(target=slow_vacuum)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        with session() as probe:
            while not probe.execute("SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = %s::regclass",
                                    [f'"{copy}"']).fetchone()[0]:
                assert time.monotonic() < deadline, "the VACUUM never showed up in pg_stat_progress_vacuum"
                time.sleep(0.05)

        def stop_vacuum():
            with session() as admin:
                admin.execute("SELECT pg_cancel_backend(%s)", [pid])
            thread.join(10)

        summary, cleared = run_until_clear({"BACKGROUND_PAUSE_DURING_VACUUM": True}, stop_vacuum, holds)
    finally:
        thread.join(30)
        vacuum.close()
    reason = assert_held_then_finished(holds, summary, copy, "vacuum")
    assert "VACUUM pid" in reason and cleared


def test_a_long_open_transaction_holds_the_copy_until_it_ends(copy, holds):
    idle = session()
    idle.execute("BEGIN")
    idle.execute("SELECT txid_current()")
    time.sleep(1.2)
    try:
        summary, _ = run_until_clear({"BACKGROUND_MAX_TRANSACTION_AGE_S": 1}, lambda: idle.execute("COMMIT"), holds)
    finally:
        idle.close()
    reason = assert_held_then_finished(holds, summary, copy, "transaction_age")
    assert "idle in transaction" in reason and "1.0 s" in reason


def test_a_queued_lock_request_on_the_table_holds_the_copy(copy, holds):
    holder, waiter = session(), session()
    holder.execute("BEGIN")
    holder.execute(f'UPDATE "{copy}" SET note = note WHERE id = 1')  # ROW EXCLUSIVE, kept

    def queue_behind():
        waiter.execute("BEGIN")
        waiter.execute(f'LOCK TABLE "{copy}" IN SHARE MODE')  # waits for the holder
        waiter.execute("COMMIT")

    thread = threading.Thread(target=queue_behind)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                      [f'"{copy}"'])[0][0] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        summary, _ = run_until_clear({"BACKGROUND_MAX_LOCK_WAITERS": 0}, lambda: holder.execute("COMMIT"), holds)
    finally:
        thread.join(10)
        holder.close()
        waiter.close()
    reason = assert_held_then_finished(holds, summary, copy, "lock_waiters")
    assert "ShareLock" in reason


def test_connection_saturation_holds_the_copy(copy, holds):
    used, available = execute(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
        "current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int "
        "- coalesce(current_setting('reserved_connections', true)::int, 0)")[0]
    # Twenty more sessions against a limit twelve above what is in use: test workers share the
    # server, so another worker opening or closing a few sessions must not decide the outcome.
    extra = [session() for _ in range(20)]

    def close():
        for each in extra:
            each.close()

    try:
        summary, _ = run_until_clear({"BACKGROUND_MAX_CONNECTION_USE": (used + 12.5) / available}, close, holds)
    finally:
        close()
    reason = assert_held_then_finished(holds, summary, copy, "connections")
    assert f"of {available} connections in use" in reason


def test_a_high_wal_rate_holds_the_copy_until_it_drops(copy, holds):
    stop = threading.Event()
    writer = session()
    junk = f"{copy}_junk"  # a logged table: temporary ones write no WAL
    writer.execute(f'CREATE TABLE "{junk}" (v text)')

    def write_wal():
        while not stop.is_set():
            writer.execute(f'INSERT INTO "{junk}" SELECT repeat(md5(i::text), 30) FROM generate_series(1, 3000) i')
            writer.execute(f'TRUNCATE "{junk}"')

    thread = threading.Thread(target=write_wal)
    thread.start()
    try:
        time.sleep(0.5)

        def quiet():
            stop.set()
            thread.join(10)

        summary, _ = run_until_clear({"BACKGROUND_MAX_WAL_BYTES_PER_S": 2 * 1024 * 1024}, quiet, holds)
    finally:
        stop.set()
        thread.join(10)
        writer.execute(f'DROP TABLE IF EXISTS "{junk}"')
        writer.close()
    reason = assert_held_then_finished(holds, summary, copy, "wal_rate")
    assert "MB/s > 2.0 MB/s" in reason


STOP = {"reason": None}


def custom_check(connection, table):
    return STOP["reason"]


def test_a_custom_check_holds_the_copy(copy, holds):
    STOP["reason"] = "the nightly export is running"
    try:
        summary, _ = run_until_clear({"BACKGROUND_HEALTH_CHECK": f"{__name__}.custom_check"},
                                     lambda: STOP.update(reason=None), holds)
    finally:
        STOP["reason"] = None
    reason = assert_held_then_finished(holds, summary, copy, "custom")
    assert "the nightly export is running" in reason


def test_status_shows_every_signal_with_value_and_limit(copy):
    with override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_MAX_WAL_BYTES_PER_S": 64 * 1024 * 1024}):
        run_pending()
    health = bg.get(connection, "health").health
    assert set(health) == {"replica_lag", "wal_rate", "vacuum", "transaction_age", "lock_waiters", "connections"}
    assert health["replica_lag"]["detail"] == "no streaming replica"
    assert health["connections"]["limit"] == 0.9 and health["transaction_age"]["limit"] == 300
    assert all(not reading["stop"] for reading in health.values())
