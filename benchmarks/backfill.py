"""Batched backfill vs one big UPDATE on the same 1M-row table.

    python benchmarks/backfill.py [--rows 1000000]

Fills ``target_a`` with a single full-table UPDATE and ``target_b`` with
safemigrate's batched backfill, each while a thread issues point reads and
writes on random rows. Prints the rows/s of each and the p99 latency of the
concurrent traffic without any migration, during the UPDATE and during the
backfill. Targets: ratio >= 0.7, p99 during the backfill <= 2x the idle p99.
The last line is ``ratio_vs_single_update=<backfill rows/s / UPDATE rows/s>``.
"""

import argparse
import os
import time

from _common import PointTraffic, dsn, percentile, scratch_database


def measure(database, rows, work):
    traffic = PointTraffic(database, rows)
    traffic.start()
    time.sleep(0.5)
    started = time.monotonic()
    work()
    elapsed = time.monotonic() - started
    time.sleep(0.2)
    latencies = traffic.stop()
    return elapsed, percentile(latencies, 99), max(latencies, default=0.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-max", type=int, default=None, help="override SAFEMIGRATE BATCH_MAX_SIZE")
    parser.add_argument("--batch-target-ms", type=int, default=None, help="override BATCH_TARGET_MS")
    parser.add_argument("--pause-ms", type=int, default=None, help="override BATCH_PAUSE_MS")
    options = parser.parse_args()
    rows = options.rows
    import psycopg

    with scratch_database("sm_bench_backfill") as database:
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id bigserial PRIMARY KEY, v int NOT NULL, payload text, "
                         "target_a int, target_b int) WITH (fillfactor = 90)")
            conn.execute("INSERT INTO bench (v, payload) SELECT i, md5(i::text) FROM generate_series(1, %s) i",
                         [rows])
            conn.execute("VACUUM ANALYZE bench")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
        import django

        django.setup()
        from django.db import connection

        from safemigrate.pg.backfill import backfill_table

        idle = PointTraffic(database, rows)
        idle.start()
        time.sleep(3)
        idle_p99 = percentile(idle.stop(), 99)

        def single_update():
            with psycopg.connect(dsn(database), autocommit=True) as conn:
                conn.execute("UPDATE bench SET target_a = v")

        update_seconds, update_p99, update_worst = measure(database, rows, single_update)
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE bench")
        result = {}

        overrides = {}
        if options.batch_max:
            overrides["BATCH_MAX_SIZE"] = options.batch_max
        if options.pause_ms is not None:
            overrides["BATCH_PAUSE_MS"] = options.pause_ms
        if options.batch_target_ms:
            overrides["BATCH_TARGET_MS"] = options.batch_target_ms

        def batched():
            from django.test import override_settings

            with override_settings(SAFEMIGRATE=overrides):
                result["r"] = backfill_table(connection, "bench", set_sql='"target_b" = "v"',
                                             progress_name=f"bench-{time.time()}")

        backfill_seconds, backfill_p99, backfill_worst = measure(database, rows, batched)
        connection.close()
        update_rate = rows / update_seconds
        backfill_rate = result["r"].rows / backfill_seconds
        print(f"rows: {rows:,}")
        print(f"single UPDATE:    {update_seconds:6.2f} s  {update_rate:12,.0f} rows/s  traffic p99 {update_p99 * 1000:8.1f} ms, worst {update_worst * 1000:7.0f} ms")
        print(f"batched backfill: {backfill_seconds:6.2f} s  {backfill_rate:12,.0f} rows/s  traffic p99 "
              f"{backfill_p99 * 1000:8.1f} ms, worst {backfill_worst * 1000:7.0f} ms "
              f"({result['r'].batches} batches, {result['r'].retries} retries)")
        print(f"traffic p99 without migration: {idle_p99 * 1000:.1f} ms; "
              f"during backfill: {backfill_p99 / idle_p99:.2f}x (target <= 2x); during UPDATE: {update_p99 / idle_p99:.1f}x")
        print(f"ratio_vs_single_update={backfill_rate / update_rate:.2f}")


if __name__ == "__main__":
    main()
