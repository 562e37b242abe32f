"""What archiving costs at contract (issue 25): the lock it holds, what it rewrites, copy speed.

    python benchmarks/archive.py [--rows 10000000] [--batch-max N] [--pause-ms N]

On a table of ``--rows`` rows (an indexed, NOT NULL, defaulted column to
remove, and a second table of the same size to drop), while a thread issues
point reads and writes on random rows of the first table:

1. soft mode, a column: ``DropColumn`` archives it (constraints, default,
   NOT NULL dropped, its index renamed aside; renamed) in one lock-bounded
   transaction; the index is dropped CONCURRENTLY after it;
2. a table: ``DropTable`` moves it into the archive schema;
3. copy mode, a column: the same archive step, then the copy of its
   ``(pk, value)`` pairs into an archive table in batches, then the drop.

For 1 and 2 it prints how long the archive step's transaction took (the time
ACCESS EXCLUSIVE is held, from its first ALTER to its commit; target <= 50 ms), the worst wait of a traffic request
during it, and whether the table or any of its indexes was rewritten (their
``relfilenode`` before and after; target: none). For 3 it prints the copy's
rows/s and the traffic's p99 and worst latency during the copy, next to the
idle p99. Last lines are ``key=value`` for scripts.
"""

import argparse
import os
import re
import time

from _common import PointTraffic, dsn, percentile, scratch_database


def filenodes(connection, table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname, pg_relation_filenode(c.oid) FROM pg_class c WHERE c.oid = %s::regclass "
                       "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %s::regclass)", [table, table])
        return dict(cursor.fetchall())


class HoldMeter:
    """How long each transaction held its table lock: from its first ALTER/DROP to its commit.

    The lock is taken by the first DDL statement and released by the commit;
    both are timed on the client, so network time makes it an upper bound.
    """

    def __init__(self, connection):
        self.connection, self.start, self.holds = connection, None, []
        self.commit = connection.commit
        connection.commit = self.committed

    def __call__(self, execute, sql, params, many, context):
        # CONCURRENTLY runs outside any transaction and holds no lock traffic waits for.
        if self.start is None and re.match(r"\s*(ALTER|DROP)\b", sql or "") and "CONCURRENTLY" not in sql:
            self.start = time.monotonic()
        return execute(sql, params, many, context)

    def committed(self):
        self.commit()
        if self.start is not None:
            self.holds.append(time.monotonic() - self.start)
            self.start = None

    def take(self):
        holds, self.holds = self.holds, []
        return [hold * 1000 for hold in holds]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-max", type=int, default=None, help="override SAFEMIGRATE BATCH_MAX_SIZE (copy)")
    parser.add_argument("--pause-ms", type=int, default=None, help="override BATCH_PAUSE_MS (copy)")
    options = parser.parse_args()
    rows = options.rows
    import psycopg

    with scratch_database("sm_bench_archive") as database:
        with psycopg.connect(dsn(database), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id bigserial PRIMARY KEY, v int NOT NULL, payload text, "
                         "legacy int NOT NULL DEFAULT 0 CHECK (legacy >= 0), legacy_copy int)")
            conn.execute("INSERT INTO bench (v, payload, legacy, legacy_copy) "
                         "SELECT i, md5(i::text), i, i FROM generate_series(1, %s) i", [rows])
            conn.execute("CREATE INDEX bench_legacy ON bench (legacy)")
            conn.execute("CREATE TABLE bench_gone (id bigserial PRIMARY KEY, bench_id bigint, note text)")
            conn.execute("INSERT INTO bench_gone (bench_id, note) SELECT i, md5(i::text) "
                         "FROM generate_series(1, %s) i", [rows])
            conn.execute("CREATE INDEX bench_gone_bench ON bench_gone (bench_id)")
            conn.execute("VACUUM ANALYZE")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
        import django

        django.setup()
        from django.db import connection, models
        from django.db.migrations.migration import Migration
        from django.db.migrations.state import ModelState, ProjectState
        from django.test import override_settings

        from safemigrate.operations import DropColumn, DropTable
        from safemigrate.pg.archive import finish_pending
        from safemigrate.pg.reporting import Report, collecting

        state = ProjectState()
        state.add_model(ModelState("shop", "Bench", [("id", models.BigAutoField(primary_key=True)),
                                                     ("v", models.IntegerField())], options={"db_table": "bench"}))

        meter = HoldMeter(connection)

        def apply(operation, settings):
            migration = Migration("0002_contract", "shop")
            migration.operations, migration.atomic = [operation], False
            report = Report()
            with override_settings(SAFEMIGRATE=settings), collecting(report):
                with connection.execute_wrapper(meter), connection.schema_editor(atomic=False) as editor:
                    migration.apply(state.clone(), editor)
                archived = meter.take()
                started = time.monotonic()
                with connection.execute_wrapper(meter):
                    finished = finish_pending(connection)
            return report, time.monotonic() - started, finished, max(archived, default=float("nan")), meter.take()

        traffic = PointTraffic(database, rows)
        traffic.start()
        time.sleep(3)
        idle_p99 = percentile([s for _, s in traffic.samples], 99)
        lines = []

        # 1. soft mode, a column.
        before = filenodes(connection, "bench")
        started = time.monotonic()
        report, checksum_seconds, _, step_ms, _ = apply(DropColumn("bench", "legacy"), {"ARCHIVE": {"default": "soft"}})
        worst = max(traffic.during(started, started + step_ms / 1000 + 0.05), default=0.0) * 1000
        after = filenodes(connection, "bench")
        rewritten = sorted(name for name in before if name in after and before[name] != after[name])
        lines.append(f"soft column: archive step {step_ms:.1f} ms (ACCESS EXCLUSIVE held), worst traffic wait "
                     f"{worst:.1f} ms, rewritten: {rewritten or 'nothing'}; checksum afterwards "
                     f"{checksum_seconds:.1f} s (a read, no lock)")
        soft_ms, soft_rewritten = step_ms, rewritten

        # 2. a table.
        before = filenodes(connection, "bench_gone")
        started = time.monotonic()
        report, checksum_seconds, finished, step_ms, _ = apply(DropTable("bench_gone"), {"ARCHIVE": {"default": "soft"}})
        worst = max(traffic.during(started, started + step_ms / 1000 + 0.05), default=0.0) * 1000
        archived = next(a for a in finished if a.kind == "table")
        moved = filenodes(connection, f'safemigrate_archive."{archived.archive_name}"')
        rewritten = sorted(set(before.values()) - set(moved.values()))
        lines.append(f"table: archive step {step_ms:.1f} ms (ACCESS EXCLUSIVE held), worst traffic wait "
                     f"{worst:.1f} ms, files rewritten: {len(rewritten)}; checksum afterwards {checksum_seconds:.1f} s")
        table_ms, table_rewritten = step_ms, rewritten

        # 3. copy mode, a column.
        settings = {"ARCHIVE": {"default": "copy"}}
        if options.batch_max:
            settings["BATCH_MAX_SIZE"] = options.batch_max
        if options.pause_ms is not None:
            settings["BATCH_PAUSE_MS"] = options.pause_ms
        report, copy_seconds, finished, copy_step_ms, final_holds = apply(DropColumn("bench", "legacy_copy"), settings)
        copy_start = time.monotonic() - copy_seconds
        during = traffic.during(copy_start, time.monotonic())
        copy_record = next(r for r in report.steps if r.step.startswith("copy "))
        rate = copy_record.rows / copy_record.duration if copy_record.duration else 0.0
        copy_p99 = percentile(during, 99)
        lines.append(f"copy column: {copy_record.rows:,} values in {copy_record.duration:.1f} s = {rate:,.0f} rows/s "
                     f"({copy_record.batches} batches, {copy_record.lock_retries} retries); traffic p99 "
                     f"{copy_p99 * 1000:.1f} ms, worst {max(during, default=0) * 1000:.0f} ms "
                     f"(idle p99 {idle_p99 * 1000:.1f} ms); lock held by the archive step {copy_step_ms:.1f} ms, "
                     f"by the final drop {max(final_holds, default=float('nan')):.1f} ms")
        traffic.stop()
        connection.close()
        print(f"rows: {rows:,}")
        for line in lines:
            print(line)
        print(f"soft_archive_lock_ms={soft_ms:.1f}")
        print(f"soft_archive_rewrites={len(soft_rewritten)}")
        print(f"table_archive_lock_ms={table_ms:.1f}")
        print(f"table_archive_rewrites={len(table_rewritten)}")
        print(f"copy_rows_per_s={rate:.0f}")
        print(f"copy_traffic_p99_ms={copy_p99 * 1000:.1f}")
        print(f"idle_traffic_p99_ms={idle_p99 * 1000:.1f}")


if __name__ == "__main__":
    main()
