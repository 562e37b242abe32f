"""Background data migrations: enqueued by expand, run by the runner, gated at contract (real server)."""

import threading
import time

import pytest
from django.db import connection, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.dispatch import receiver
from django.test import override_settings

from safemigrate.exceptions import BackgroundMigrationUnfinished
from safemigrate.operations import (
    Backfill,
    ChangePrimaryKeyToBigint,
    ChangeTypeViaCopy,
    FinishChangePrimaryKeyToBigint,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RenameViaCopy,
    RunPythonBatched,
    SetNotNull,
)
from safemigrate.pg import background_state as bg
from safemigrate.pg.background_runner import run_pending
from safemigrate.signals import background_migration_state_changed
from tests.utils import apply_operations, execute, fill_table, run_command

SMALL = {"BATCH_INITIAL_SIZE": 100, "BATCH_MIN_SIZE": 50, "BATCH_MAX_SIZE": 200, "BACKGROUND_DUTY_CYCLE": 1.0,
         "BACKGROUND_FINALIZE_INLINE_S": 0, "BACKGROUND_MAX_WAL_BYTES_PER_S": None}
ROWS = 3000


def customer_state(table, name_field=None):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Customer",
        [("id", models.BigAutoField(primary_key=True)),
         ("name", name_field or models.CharField(max_length=50)),
         ("points", models.IntegerField()), ("note", models.TextField(null=True))],
        options={"db_table": table},
    ))
    return state


@pytest.fixture
def customers(table_name):
    state = customer_state(table_name)
    apply_operations([migrations.CreateModel(
        "Customer", list(state.models["shop", "customer"].fields.items()), options={"db_table": table_name})],
        atomic=True)
    fill_table(table_name, ROWS, name="'c' || i", points="i")
    execute(f'ANALYZE "{table_name}"')
    # Progress rows outlive a test (a raw table, not flushed); these tests reuse copy names.
    execute("DROP TABLE IF EXISTS safemigrate_backfill_progress")
    with override_settings(SAFEMIGRATE=SMALL):
        yield table_name, state


@pytest.fixture
def signals():
    seen = []

    @receiver(background_migration_state_changed)
    def record(sender, name, old_state, new_state, reason, snapshot, using, **kwargs):
        seen.append((name, old_state, new_state))

    yield seen
    background_migration_state_changed.disconnect(record)


def count(sql, params=None):
    return execute(sql, params)[0][0]


def test_rename_in_background_enqueues_then_the_runner_copies_and_contract_finishes(customers, signals):
    table, state = customers
    new_state, _ = apply_operations([RenameViaCopy("customer", "name", "full_name", background=True)], state)
    name = f"{table}.rename.name.full_name"
    row = bg.get(connection, name)
    assert row.state == "queued" and row.columns == ["full_name"] and row.rows_total == ROWS
    # Only rows written since the trigger are copied; the rest waits for the runner; NOT NULL waits too.
    assert count(f'SELECT count(*) FROM "{table}" WHERE full_name IS NULL') == ROWS
    execute(f'UPDATE "{table}" SET name = %s WHERE id = 1', ["written"])
    assert count(f'SELECT full_name FROM "{table}" WHERE id = 1') == "written"

    with pytest.raises(BackgroundMigrationUnfinished) as refused:
        apply_operations([FinishRenameViaCopy("customer", "name", "full_name")], new_state)
    message = str(refused.value)
    assert name in message and "queued" in message and "backfills finalize" in message and "ETA" in message

    summary = run_pending()
    assert summary.finished == [name] and not summary.failed
    assert count(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == 0
    row = bg.get(connection, name)
    assert row.state == "finished" and row.rows_done == ROWS - 1 and row.batches >= ROWS // 200
    assert row.rows_per_second > 0 and 0 < row.duty_cycle <= 1

    apply_operations([FinishRenameViaCopy("customer", "name", "full_name")], new_state)
    assert bg.get(connection, name).state == "finalized"
    nullable = execute("SELECT is_nullable FROM information_schema.columns WHERE table_name = %s "
                       "AND column_name = 'full_name'", [table])
    assert nullable == [("NO",)]
    assert [(old, new) for n, old, new in signals if n == name] == [
        (None, "queued"), ("queued", "running"), ("running", "finished"), ("finished", "finalized")]


def test_type_change_in_background_swaps_at_contract_with_not_null(customers):
    table, state = customers
    new_state, _ = apply_operations(
        [ChangeTypeViaCopy("customer", "points", models.BigIntegerField(), background=True)], state)
    name = f"{table}.cast.points"
    assert bg.get(connection, name).state == "queued"
    assert count(f'SELECT count(*) FROM "{table}" WHERE points__sm_new IS NULL') == ROWS
    run_pending()
    apply_operations([FinishChangeTypeViaCopy("customer", "points", models.BigIntegerField())], new_state)
    assert execute("SELECT data_type, is_nullable FROM information_schema.columns WHERE table_name = %s "
                   "AND column_name = 'points'", [table]) == [("bigint", "NO")]
    assert count(f'SELECT count(*) FROM "{table}" WHERE points <> id') == 0
    assert bg.get(connection, name).state == "finalized"


def test_bigint_key_in_background(table_name):
    table = table_name
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.AutoField(primary_key=True)),
                                                    ("points", models.IntegerField())],
                               options={"db_table": table}))
    apply_operations([migrations.CreateModel("Customer", list(state.models["shop", "customer"].fields.items()),
                                             options={"db_table": table})], atomic=True)
    fill_table(table, ROWS, points="i")
    with override_settings(SAFEMIGRATE=SMALL):
        new_state, _ = apply_operations([ChangePrimaryKeyToBigint("customer", background=True)], state)
        _finish_bigint(table, new_state)


def _finish_bigint(table, new_state):
    assert bg.get(connection, f"{table}.bigint.id").state == "queued"
    with pytest.raises(BackgroundMigrationUnfinished, match=f"{table}.bigint.id"):
        apply_operations([FinishChangePrimaryKeyToBigint("customer")], new_state)
    run_pending()
    apply_operations([FinishChangePrimaryKeyToBigint("customer")], new_state)
    assert execute("SELECT data_type, is_nullable FROM information_schema.columns WHERE table_name = %s "
                   "AND column_name = 'id'", [table]) == [("bigint", "NO")]


def test_the_contract_finalizes_a_copy_inline_within_its_budget(customers):
    table, state = customers
    fill = Backfill("customer", set={"note": "'n' || \"points\""}, where='"note" IS NULL', name="fill-note",
                    background=True)
    apply_operations([fill], state)
    assert bg.get(connection, "fill-note").state == "queued"
    final = customer_state(table)
    final.models["shop", "customer"].fields["note"] = models.TextField(null=True)
    with override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_FINALIZE_INLINE_S": 60}):
        apply_operations([SetNotNull("customer", "note", models.TextField())], final)
    assert count(f'SELECT count(*) FROM "{table}" WHERE note IS DISTINCT FROM \'n\' || points') == 0
    assert bg.get(connection, "fill-note").state == "finalized"


def test_set_not_null_refuses_while_a_paused_backfill_fills_the_column(customers):
    table, state = customers
    apply_operations([Backfill("customer", set={"note": "'x'"}, name="fill-x", background=True)], state)
    bg.pause(connection, "fill-x")
    with override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_FINALIZE_INLINE_S": 60}):
        with pytest.raises(BackgroundMigrationUnfinished) as refused:
            apply_operations([SetNotNull("customer", "note", models.TextField())], state)
    assert "paused" in str(refused.value) and "backfills resume fill-x" in str(refused.value)
    assert count(f'SELECT count(*) FROM "{table}" WHERE note IS NULL') == ROWS  # nothing ran


def test_the_runner_does_not_start_a_batch_after_pause_and_resumes_on_resume(customers):
    table, state = customers
    apply_operations([Backfill("customer", set={"points": '"points" + 1000000'}, name="slow", background=True)],
                     state)
    pauses = []

    def sleep(seconds):
        # The duty cycle's rest between batches: pause after the third batch.
        pauses.append(seconds)
        if len(pauses) == 3:
            bg.pause(connection, "slow")
        time.sleep(seconds)

    with override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_DUTY_CYCLE": 0.5}):
        summary = run_pending(sleep=sleep)
    assert summary.stopped == ["slow"] and not summary.finished
    row = bg.get(connection, "slow")
    assert row.state == "paused" and row.batches == 3
    done = count(f'SELECT count(*) FROM "{table}" WHERE points > 1000000')
    assert done == row.rows_done and 0 < done < ROWS
    bg.resume(connection, "slow")
    run_pending()
    # Every row was incremented exactly once ("points + 1000000" is not idempotent).
    assert count(f'SELECT count(*) FROM "{table}" WHERE points <> id + 1000000') == 0


def test_two_runners_at_once_each_row_once(customers):
    table, state = customers
    apply_operations([Backfill("customer", set={"points": '"points" + 1'}, name="twice-a", background=True),
                      Backfill("customer", set={"name": "name || '!'"}, name="twice-b", background=True)], state)
    results = []

    def runner():
        try:
            results.append(run_pending())
        finally:
            connection.close()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(name for r in results for name in r.finished) == ["twice-a", "twice-b"]
    assert count(f'SELECT count(*) FROM "{table}" WHERE points <> id + 1 OR name <> \'c\' || id || \'!\'') == 0


def test_a_failed_batch_fails_the_migration_keeps_its_progress_and_retry_finishes(customers):
    table, state = customers
    execute(f'UPDATE "{table}" SET name = CASE WHEN id = 2500 THEN %s ELSE id::text END', ["not-a-number"])
    new_state, _ = apply_operations(
        [ChangeTypeViaCopy("customer", "name", models.IntegerField(null=True), background=True)],
        customer_state(table, models.CharField(max_length=50)))
    summary = run_pending()
    name = f"{table}.cast.name"
    assert [n for n, _ in summary.failed] == [name]
    row = bg.get(connection, name)
    assert row.state == "failed" and "failed after" in row.error and "backfills retry" in row.error
    assert "invalid input syntax" in row.error and 0 < row.rows_done < ROWS
    with pytest.raises(Exception, match="failed"):
        bg.pause(connection, name)
    execute(f'UPDATE "{table}" SET name = %s WHERE id = 2500', ["2500"])
    bg.retry(connection, name)
    run_pending()
    assert bg.get(connection, name).state == "finished"
    assert count(f'SELECT count(*) FROM "{table}" WHERE name__sm_new IS DISTINCT FROM id') == 0


def test_a_dropped_table_fails_with_a_clear_message_and_cancel_works(customers):
    table, state = customers
    apply_operations([Backfill("customer", set={"note": "'x'"}, name="orphan", background=True)], state)
    execute(f'DROP TABLE "{table}"')
    summary = run_pending()
    assert [n for n, _ in summary.failed] == ["orphan"]
    error = bg.get(connection, "orphan").error
    assert "no longer exists" in error and "backfills cancel orphan" in error
    assert bg.cancel(connection, "orphan").state == "cancelled"


def test_while_django_builds_the_test_database_every_copy_runs_inline(customers):
    from safemigrate import stages

    table, state = customers
    token = stages._creating_test_database.set(True)
    try:
        apply_operations([RenameViaCopy("customer", "name", "full_name", background=True)], state)
    finally:
        stages._creating_test_database.reset(token)
    assert bg.find(connection, f"{table}.rename.name.full_name") is None
    assert count(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == 0


def test_a_function_the_runner_cannot_import_is_refused_with_the_reason(customers):
    from safemigrate.exceptions import BackgroundMigrationError

    table, state = customers
    with pytest.raises(BackgroundMigrationError, match="lambda or a function defined inside another"):
        apply_operations([RunPythonBatched("customer", lambda apps, rows: None, background=True)], state)
    assert bg.all_rows(connection) == []


BILLING = {
    "0001_initial.py": """
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            operations = [
                migrations.CreateModel("Item", [("id", models.BigAutoField(primary_key=True)),
                                                ("v", models.IntegerField(null=True))],
                                       options={"db_table": "bgm_item"}),
                migrations.RunSQL("INSERT INTO bgm_item (v) SELECT NULL FROM generate_series(1, 300)"),
            ]
    """,
    "0002_fill.py": """
        from django.db import migrations
        import safemigrate.operations


        class Migration(migrations.Migration):
            atomic = False
            dependencies = [("billing", "0001_initial")]
            operations = [safemigrate.operations.Backfill("item", set={"v": "1"}, name="bgm-expand")]
    """,
    "0003_contract.py": """
        from django.db import migrations
        import safemigrate.operations


        class Migration(migrations.Migration):
            atomic = False
            stage = "contract"
            dependencies = [("billing", "0002_fill")]
            operations = [safemigrate.operations.Backfill("item", set={"v": "2"}, name="bgm-contract")]
    """,
}


@pytest.mark.parametrize("threshold, enqueued", [(0, True), (301, False), (None, False)])
def test_without_the_argument_background_min_rows_decides_in_expand_migrations_only(tmp_path, transactional_db,
                                                                                   threshold, enqueued):
    from tests.utils import forget_migrations, temporary_migration_modules

    execute("DROP TABLE IF EXISTS safemigrate_backfill_progress")
    try:
        with temporary_migration_modules(tmp_path, {"billing": BILLING}), \
                override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_MIN_ROWS": threshold,
                                               "BACKGROUND_FINALIZE_INLINE_S": 60}):
            run_command("migrate", "billing")
            assert (bg.find(connection, "bgm-expand") is not None) is enqueued
            assert count("SELECT count(*) FROM bgm_item WHERE v IS NULL") == (300 if enqueued else 0)
            run_command("migrate_contract", "billing")  # finalizes the expand copy inline, then its own inline
            assert bg.find(connection, "bgm-contract") is None
            assert count("SELECT count(*) FROM bgm_item WHERE v IS DISTINCT FROM 2") == 0
    finally:
        forget_migrations("billing")
        execute("DROP TABLE IF EXISTS bgm_item")


def test_releases_in_flight_a_later_expand_never_waits_only_the_contract_that_needs_the_copy(customers):
    table, state = customers
    # Release N: a rename copied in the background; its contract waits.
    n_state, _ = apply_operations([RenameViaCopy("customer", "name", "full_name", background=True)], state)
    # Release N+1's expand runs meanwhile, on the same table, copy included.
    apply_operations([Backfill("customer", set={"note": "'n+1'"}, name="next-release", background=True)], n_state)
    assert {r.name: r.state for r in bg.all_rows(connection)} == {
        f"{table}.rename.name.full_name": "queued", "next-release": "queued"}
    with pytest.raises(BackgroundMigrationUnfinished):
        apply_operations([FinishRenameViaCopy("customer", "name", "full_name")], n_state)
    summary = run_pending()
    assert sorted(summary.finished) == sorted([f"{table}.rename.name.full_name", "next-release"])
    apply_operations([FinishRenameViaCopy("customer", "name", "full_name")], n_state)
    assert count(f'SELECT count(*) FROM "{table}" WHERE note IS DISTINCT FROM \'n+1\'') == 0


def test_a_batch_past_its_timeout_is_retried_with_fewer_rows(customers):
    table, state = customers
    # Each of the first 60 rows takes 2 ms to compute (per row: the sleep reads the row), and a
    # background batch may take max(STATEMENT_TIMEOUT_MS, 20 x BATCH_TARGET_MS) = 100 ms.
    apply_operations([Backfill("customer", set={"note": "(pg_sleep(0.002 + \"points\" * 0))::text || 'x'"},
                               where='"id" <= 60', name="slow-rows", background=True)], state)
    with override_settings(SAFEMIGRATE={**SMALL, "STATEMENT_TIMEOUT_MS": 1, "BATCH_TARGET_MS": 5,
                                        "BATCH_MIN_SIZE": 1, "BATCH_INITIAL_SIZE": 60, "BATCH_MAX_SIZE": 5000,
                                        "RETRY_BACKOFF_BASE_MS": 1, "RETRY_BACKOFF_MAX_MS": 5}):
        summary = run_pending()
    assert summary.finished == ["slow-rows"]
    row = bg.get(connection, "slow-rows")
    assert row.retries >= 1 and row.attempts == 0
    assert count(f'SELECT count(*) FROM "{table}" WHERE note IS NOT NULL') == 60


def test_a_receiver_that_raises_changes_nothing(customers):
    table, state = customers

    def broken(sender, **kwargs):
        raise RuntimeError("the chat service is down")

    background_migration_state_changed.connect(broken)
    try:
        apply_operations([Backfill("customer", set={"note": "'r'"}, name="loud", background=True)], state)
        summary = run_pending()
    finally:
        background_migration_state_changed.disconnect(broken)
    assert summary.finished == ["loud"] and bg.get(connection, "loud").state == "finished"


def test_max_seconds_gives_the_migration_back_and_the_next_run_goes_on(customers):
    table, state = customers
    apply_operations([Backfill("customer", set={"points": '"points" + 1'}, name="bounded", background=True)], state)
    with override_settings(SAFEMIGRATE={**SMALL, "BACKGROUND_DUTY_CYCLE": 0.5, "BATCH_TARGET_MS": 1}):
        summary = run_pending(max_seconds=0.5, sleep=lambda seconds: time.sleep(max(seconds, 0.1)))
    row = bg.get(connection, "bounded")
    assert not summary.finished and row.state == "queued" and 0 < row.rows_done < ROWS
    run_pending()
    assert bg.get(connection, "bounded").state == "finished"
    assert count(f'SELECT count(*) FROM "{table}" WHERE points <> id + 1') == 0


def test_forever_picks_up_work_enqueued_later(customers):
    table, state = customers
    results = []

    def worker():
        try:
            results.append(run_pending(forever=True, max_seconds=6, poll_s=0.2))
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(1)
    apply_operations([Backfill("customer", set={"note": "'later'"}, name="later", background=True)], state)
    thread.join(30)
    assert results and results[0].finished == ["later"]
