"""Background data migrations: how long ``migrate`` takes, copy speed, and what the app feels.

    python benchmarks/background.py [--rows 10000000] [--duty-cycle D] [--batch-target-ms N]

On one table of ``--rows`` rows (id, name varchar(50), points int, payload):

1. ``migrate`` of a rename (``RenameViaCopy``) and of a type change (``ChangeTypeViaCopy``
   int -> bigint), both ``background=True``: the expand operations as ``migrate`` applies them.
   Target: each under 10 s at 10M rows.
2. The app's traffic (point reads and writes on random rows, writes firing the expand's
   triggers) with no copy running: the idle p99.
3. ``backfills run`` (``run_pending``) copying each, with the default throttling, under the
   same traffic: rows/s and the traffic's p99. Target: p99 <= 2x idle.
4. The same kind of copy inline (``migrate``'s engine, no duty cycle) under the same traffic:
   rows/s and p99, for comparison.

The last lines are ``key=value`` figures.
"""

import argparse
import os
import time

from _common import PointTraffic, dsn, percentile, scratch_database


class AppTraffic(PointTraffic):
    """Point reads and writes; the writes go through the copy triggers the expand installed."""

    READ = "SELECT name, points FROM bench WHERE id = %s"
    WRITE = "UPDATE bench SET payload = md5(random()::text) WHERE id = %s"


def under_traffic(database, rows, work):
    traffic = AppTraffic(database, rows)
    traffic.start()
    time.sleep(0.5)
    started = time.monotonic()
    result = work()
    elapsed = time.monotonic() - started
    latencies = traffic.stop()
    return result, elapsed, percentile(latencies, 99), max(latencies, default=0.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--duty-cycle", type=float, default=None, help="override BACKGROUND_DUTY_CYCLE")
    parser.add_argument("--batch-target-ms", type=int, default=None, help="override BATCH_TARGET_MS")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    options = parser.parse_args()
    rows = options.rows
    import psycopg

    with scratch_database("sm_bench_background") as database:
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id bigserial PRIMARY KEY, name varchar(50) NOT NULL, "
                         "points int NOT NULL, payload text, inline_copy int)")
            conn.execute("INSERT INTO bench (name, points, payload) SELECT 'n' || i, i, md5(i::text) "
                         "FROM generate_series(1, %s) i", [rows])
            conn.execute("VACUUM ANALYZE bench")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
        import django

        django.setup()
        from django.db import connection, models
        from django.db.migrations.migration import Migration
        from django.db.migrations.state import ModelState, ProjectState
        from django.test import override_settings

        from safemigrate.operations import ChangeTypeViaCopy, RenameViaCopy
        from safemigrate.pg.backfill import backfill_table
        from safemigrate.pg.background_runner import run_pending

        overrides = {}
        if options.duty_cycle is not None:
            overrides["BACKGROUND_DUTY_CYCLE"] = options.duty_cycle
        if options.batch_target_ms is not None:
            overrides["BATCH_TARGET_MS"] = options.batch_target_ms

        state = ProjectState()
        state.add_model(ModelState("bench", "Bench", [
            ("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=50)),
            ("points", models.IntegerField()), ("payload", models.TextField(null=True)),
            ("inline_copy", models.IntegerField(null=True))], options={"db_table": "bench"}))

        def apply(operation, before):
            migration = Migration("0002_expand", "bench")
            migration.operations = [operation]
            started = time.monotonic()
            with connection.schema_editor(atomic=False) as editor:
                after = migration.apply(before.clone(), editor)
            return after, time.monotonic() - started

        with override_settings(SAFEMIGRATE=overrides):
            state, rename_s = apply(RenameViaCopy("bench", "name", "full_name", background=True), state)
            idle = AppTraffic(database, rows)
            idle.start()
            time.sleep(options.idle_seconds)
            idle_p99 = percentile(idle.stop(), 99)
            # Each copy alone: a rename's copy UPDATE also fires the cast trigger of a type change
            # enqueued beside it, which would leave that copy nothing to do.
            rename_run, rename_run_s, rename_p99, rename_worst = under_traffic(database, rows, run_pending)
            state, type_s = apply(ChangeTypeViaCopy("bench", "points", models.BigIntegerField(),
                                                    background=True), state)
            type_run, type_run_s, type_p99, type_worst = under_traffic(database, rows, run_pending)
            result, inline_s, inline_p99, inline_worst = under_traffic(
                database, rows, lambda: backfill_table(connection, "bench", set_sql='"inline_copy" = "points"',
                                                       progress_name="bench-inline"))
            from safemigrate.pg import background_state

            for row in background_state.all_rows(connection):
                print(f"  {row.name}: {row.state}, {row.rows_done:,} rows, {row.batches} batches, last batch "
                      f"{row.batch_size} rows in {row.last_batch_ms} ms, {row.rows_per_second:,.0f} rows/s, "
                      f"duty cycle {row.duty_cycle:.2f}, held {row.throttle_reason or 'never'}")
        connection.close()
        inline_rate = result.rows / inline_s
        print(f"rows: {rows:,}")
        print(f"migrate, rename in background mode:        {rename_s:7.2f} s")
        print(f"migrate, int -> bigint in background mode: {type_s:7.2f} s")
        print(f"traffic p99 with no copy running: {idle_p99 * 1000:8.2f} ms")
        worst_p99 = max(rename_p99, type_p99)
        for label, run, seconds, p99, worst in (("rename copy", rename_run, rename_run_s, rename_p99, rename_worst),
                                                ("type change copy", type_run, type_run_s, type_p99, type_worst)):
            print(f"backfills run, {label}: {run.rows:,} rows in {seconds:.1f} s, {run.rows / seconds:,.0f} rows/s, "
                  f"traffic p99 {p99 * 1000:.2f} ms ({p99 / idle_p99:.2f}x idle), worst {worst * 1000:.0f} ms, "
                  f"held {run.held or 'never'}")
        print(f"inline copy: {result.rows:,} rows in {inline_s:.1f} s, {inline_rate:,.0f} rows/s, traffic p99 "
              f"{inline_p99 * 1000:.2f} ms ({inline_p99 / idle_p99:.2f}x idle), worst {inline_worst * 1000:.0f} ms")
        print(f"migrate_rename_s={rename_s:.2f}")
        print(f"migrate_type_change_s={type_s:.2f}")
        print(f"background_rows_per_s={(rename_run.rows + type_run.rows) / (rename_run_s + type_run_s):.0f}")
        print(f"inline_rows_per_s={inline_rate:.0f}")
        print(f"background_p99_vs_idle={worst_p99 / idle_p99:.2f}")
        print(f"inline_p99_vs_idle={inline_p99 / idle_p99:.2f}")


if __name__ == "__main__":
    main()
