"""The backfill's replica-lag throttle against a real streaming replica.

A private primary + hot standby pair (``testproject.replica``) is started for
this module. Replay is paused on the replica with ``pg_wal_replay_pause()``:
WAL keeps arriving there but is not applied, which is what a replica stuck
behind a long query (or an operator) looks like from the primary.
"""

import time

import pytest
from django.db import connections
from django.test import override_settings

from safemigrate.pg import backfill
from safemigrate.exceptions import ReplicaLagError
from safemigrate.pg import replica_lag
from safemigrate.pg.reporting import Report, collecting
from testproject.pgserver import database_settings
from testproject.replica import start_pair

ROWS = 20_000
ALIAS = "replica_pair_primary"
# Small batches with a pause between them, so the backfill lasts a few seconds
# and a replica that stops replaying is noticed half-way through.
THROTTLE = {"BATCH_INITIAL_SIZE": 200, "BATCH_MIN_SIZE": 100, "BATCH_MAX_SIZE": 200, "BATCH_PAUSE_MS": 20,
            "MAX_REPLICA_LAG_MS": 400}


@pytest.fixture(scope="module")
def pair():
    pair = start_pair()
    yield pair
    pair.stop()


@pytest.fixture
def primary(pair, django_db_blocker):
    """A Django connection to the pair's primary, with a fresh table ``numbers`` of ROWS rows."""
    entry = {**database_settings(pair.primary_url), "OPTIONS": {}, "PORT": "5432"}
    configured = connections.configure_settings({"default": connections.settings["default"], ALIAS: entry})
    connections.settings[ALIAS] = configured[ALIAS]
    with pair.primary() as conn:
        conn.execute("DROP TABLE IF EXISTS numbers; DROP TABLE IF EXISTS safemigrate_backfill_progress; "
                     "DROP TABLE IF EXISTS safemigrate_background_migration")
        conn.execute("CREATE TABLE numbers (id bigserial PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO numbers (v) SELECT i FROM generate_series(1, %s) i", [ROWS])
    pair.wait_replayed()
    with django_db_blocker.unblock():
        yield connections[ALIAS]
        connections[ALIAS].close()
    with pair.replica() as conn:
        if conn.execute("SELECT pg_is_wal_replay_paused()").fetchone()[0]:
            conn.execute("SELECT pg_wal_replay_resume()")
    del connections[ALIAS]
    del connections.settings[ALIAS]


def progress_rows(pair):
    with pair.primary() as conn:
        row = conn.execute("SELECT rows FROM safemigrate_backfill_progress WHERE name = 'lag'").fetchone()
    return row[0] if row else 0


def test_backfill_pauses_while_replay_is_paused_reports_it_and_finishes_after_resume(pair, primary):
    lines, seen = [], []
    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")

    def sleep(seconds):
        # The engine's sleeps: 20 ms between batches (BATCH_PAUSE_MS), 1 s in the throttle's wait.
        if seconds >= 1.0:
            seen.append(progress_rows(pair))
            if len(seen) == 3:
                with pair.replica() as conn:
                    conn.execute("SELECT pg_wal_replay_resume()")
        time.sleep(seconds)

    with override_settings(SAFEMIGRATE={**THROTTLE, "REPLICA_LAG_MAX_WAIT_S": 30}), \
            collecting(Report(echo=lines.append)):
        result = backfill.backfill_table(primary, "numbers", set_sql='"v" = "v" + 1', progress_name="lag",
                                         sleep=sleep)
    paused = [line for line in lines if "paused, replicas lag" in line]
    assert paused, lines
    assert "walreceiver (streaming" in paused[0]
    assert any("replicas caught up after" in line for line in lines), lines
    # Nothing was written while it waited: the committed progress did not move.
    assert len(seen) >= 3 and seen[0] == seen[1] == seen[2]
    assert 0 < seen[0] < ROWS
    assert result.lag_waits >= 3 and result.rows == ROWS
    pair.wait_replayed()
    with pair.replica() as conn:
        assert conn.execute("SELECT count(*) FROM numbers WHERE v <> id + 1").fetchone()[0] == 0


def test_backfill_stops_with_a_clear_error_after_the_bound_and_a_rerun_resumes(pair, primary):
    lines = []
    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with override_settings(SAFEMIGRATE={**THROTTLE, "REPLICA_LAG_MAX_WAIT_S": 2}), \
            collecting(Report(echo=lines.append)):
        with pytest.raises(ReplicaLagError) as caught:
            backfill.backfill_table(primary, "numbers", set_sql='"v" = "v" + 1', progress_name="lag")
    message = str(caught.value)
    assert "REPLICA_LAG_MAX_WAIT_S is 2" in message and "MAX_REPLICA_LAG_MS is 400" in message
    assert "walreceiver (streaming" in message and "backfill wrote" in message
    assert "run the same migrate command again" in message
    assert caught.value.waited_s >= 2 and caught.value.lag_ms > 400
    done = progress_rows(pair)
    assert 0 < done < ROWS
    assert f"The {done:,} rows done so far are committed" in message
    with pair.primary() as conn:
        # Exactly the committed rows were changed, each once ("v + 1" is not idempotent).
        assert conn.execute("SELECT count(*) FROM numbers WHERE v = id + 1").fetchone()[0] == done
        assert conn.execute("SELECT count(*) FROM numbers WHERE v <> id + 1 AND v <> id").fetchone()[0] == 0

    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    with override_settings(SAFEMIGRATE={**THROTTLE, "REPLICA_LAG_MAX_WAIT_S": 30}):
        resumed = backfill.backfill_table(primary, "numbers", set_sql='"v" = "v" + 1', progress_name="lag")
    assert resumed.resumed and resumed.rows == ROWS - done
    with pair.primary() as conn:
        assert conn.execute("SELECT count(*) FROM numbers WHERE v <> id + 1").fetchone()[0] == 0
    pair.wait_replayed()
    with pair.replica() as conn:
        assert conn.execute("SELECT count(*) FROM numbers WHERE v <> id + 1").fetchone()[0] == 0


def test_the_clock_is_zero_once_the_replica_has_replayed_and_grows_while_replay_is_paused(pair, primary):
    clock = replica_lag.LagClock(primary)
    pair.wait_replayed()
    # The primary hears of the replay at the replica's next report (every 1 s here).
    deadline = time.monotonic() + 10
    while replica_lag.replica_lag_ms(primary, clock) != 0:
        assert time.monotonic() < deadline, "the lag never went back to 0 after the replica replayed"
        time.sleep(0.1)
    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with pair.primary() as conn:
        conn.execute("UPDATE numbers SET v = v WHERE id <= 10")
        clock.mark(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
    time.sleep(0.5)
    later = replica_lag.LagClock(primary)  # a backfill that starts while the replica is behind
    first = replica_lag.replica_lag_ms(primary, clock)
    time.sleep(1.0)
    second = replica_lag.replica_lag_ms(primary, clock)
    from_start = replica_lag.replica_lag_ms(primary, later)
    assert 400 < first < second and second - first >= 900
    # The later clock counts from its own start, not from the older unreplayed WAL.
    assert 900 <= from_start <= second - 400


def test_none_turns_the_throttle_off(pair, primary):
    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with override_settings(SAFEMIGRATE={**THROTTLE, "MAX_REPLICA_LAG_MS": None, "BATCH_MAX_SIZE": 5000}):
        result = backfill.backfill_table(primary, "numbers", set_sql='"v" = "v" + 1', progress_name="lag")
    assert result.rows == ROWS and result.lag_waits == 0


def test_a_role_that_cannot_see_replica_positions_is_told_so(pair, primary):
    with pair.primary() as conn:
        conn.execute("DROP ROLE IF EXISTS plain_migrator")
        conn.execute("CREATE ROLE plain_migrator LOGIN")
        conn.execute("GRANT ALL ON numbers TO plain_migrator; GRANT CREATE ON SCHEMA public TO plain_migrator")
    alias = "replica_pair_plain"
    entry = {**connections.settings[ALIAS], "USER": "plain_migrator"}
    connections.settings[alias] = entry
    lines = []
    try:
        with override_settings(SAFEMIGRATE={**THROTTLE, "BATCH_MAX_SIZE": 5000}), \
                collecting(Report(echo=lines.append)):
            result = backfill.backfill_table(connections[alias], "numbers", set_sql='"v" = "v" + 1',
                                             progress_name="plain")
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]
    assert result.rows == ROWS
    assert any("cannot see replica positions" in line and "pg_read_all_stats" in line for line in lines), lines


def test_a_background_copy_holds_while_replay_is_paused_and_resumes_by_itself(pair, primary):
    from types import SimpleNamespace

    from safemigrate.pg import background_mode
    from safemigrate.pg import background_state as bg
    from safemigrate.pg.background_runner import run_pending

    background_mode.enqueue_sql(SimpleNamespace(connection=primary, collect_sql=False), name="bg-lag",
                                table="numbers", set_sql='"v" = "v" + 1', columns=["v"])
    with pair.replica() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    held_rows = []

    def sleep(seconds):
        row = bg.get(primary, "bg-lag")
        if row.state == "on_hold":
            held_rows.append(row.rows_done)
            if len(held_rows) == 3:
                with pair.replica() as conn:
                    conn.execute("SELECT pg_wal_replay_resume()")
        time.sleep(seconds)

    settings = {**THROTTLE, "BATCH_PAUSE_MS": 0, "BACKGROUND_HOLD_S": 0.5, "BACKGROUND_DUTY_CYCLE": 0.5,
                "BACKGROUND_MAX_WAL_BYTES_PER_S": None}
    with override_settings(SAFEMIGRATE=settings):
        summary = run_pending(ALIAS, sleep=sleep)
    assert summary.finished == ["bg-lag"]
    # The copy wrote until the lag passed 400 ms, then not one batch while replay stayed paused.
    assert len(held_rows) >= 3 and held_rows[0] == held_rows[1] == held_rows[2] and 0 < held_rows[0] < ROWS
    row = bg.get(primary, "bg-lag")
    assert row.throttle_reason.startswith("replica_lag ") and "> 400 ms" in row.throttle_reason
    assert "walreceiver (streaming" in row.throttle_reason
    pair.wait_replayed()
    with pair.replica() as conn:
        assert conn.execute("SELECT count(*) FROM numbers WHERE v <> id + 1").fetchone()[0] == 0


@pytest.mark.parametrize("value", [0, -5, "600", 1.5, None, True])
def test_the_wait_bound_must_be_a_positive_integer(value):
    from safemigrate.checks import check_settings

    with override_settings(SAFEMIGRATE={"REPLICA_LAG_MAX_WAIT_S": value}):
        errors = check_settings()
    assert [e.id for e in errors] == ["safemigrate.E003"]
    assert "REPLICA_LAG_MAX_WAIT_S" in errors[0].msg
    with override_settings(SAFEMIGRATE={"REPLICA_LAG_MAX_WAIT_S": 30}):
        assert check_settings() == []
