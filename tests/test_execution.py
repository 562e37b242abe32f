"""The execution path's parts: statement locks, rewrites, stage settings, plan annotation, exhaustion."""

import pytest
from django.db import connection, connections, migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.state import ModelState, ProjectState
from django.test import override_settings

from safemigrate.exceptions import LockTimeoutExhausted
from safemigrate.pg import rewrite
from safemigrate.pg.execution import annotate_plan, describe_statement_lock
from safemigrate.pg.classify import classify
from safemigrate.stages import Stage, migration_stage
from tests.test_execution_traffic import HEADER, busy, constraints, indexes, state_only_initial  # noqa: F401
from tests.utils import execute, run_command, temporary_migration_modules


@pytest.mark.parametrize("sql, lock, disposition_atomic, disposition_non_atomic, blocking", [
    ('CREATE INDEX "i" ON "t" ("v")', "SHARE", "bounded", "rewritten", True),
    ('CREATE INDEX CONCURRENTLY "i" ON "t" ("v")', "SHARE UPDATE EXCLUSIVE", "unbounded", "unbounded", False),
    ('ALTER TABLE "t" ADD CONSTRAINT "c" CHECK ("v" > 0)', "ACCESS EXCLUSIVE", "bounded", "rewritten", True),
    ('ALTER TABLE "t" ADD CONSTRAINT "c" CHECK ("v" > 0) NOT VALID', "ACCESS EXCLUSIVE", "bounded", "bounded", False),
    ('ALTER TABLE "t" VALIDATE CONSTRAINT "c"', "SHARE UPDATE EXCLUSIVE", "unbounded", "unbounded", False),
    ('ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE ("a", "b")', "ACCESS EXCLUSIVE", "bounded", "rewritten", True),
    ('ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE USING INDEX "u"', "ACCESS EXCLUSIVE", "bounded", "bounded", False),
    ('ALTER TABLE "t" ALTER COLUMN "v" TYPE bigint USING "v"::bigint', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
    ('ALTER TABLE "t" ALTER COLUMN "v" SET NOT NULL', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
    ('ALTER TABLE "t" DROP COLUMN "v" CASCADE', "ACCESS EXCLUSIVE", "bounded", "bounded", False),
    ('ALTER TABLE "t" RENAME TO "u"', "ACCESS EXCLUSIVE", "bounded", "bounded", False),
    ('CREATE TABLE "n" ("id" bigint NOT NULL PRIMARY KEY)', "ACCESS EXCLUSIVE on the new table", "bounded",
     "bounded", False),
    ('UPDATE "t" SET v = 1', "ROW EXCLUSIVE", "unbounded", "unbounded", False),
    ("SELECT 1", "ACCESS SHARE", "unbounded", "unbounded", False),
    ('LOCK TABLE "t" IN SHARE MODE', "SHARE", "bounded", "bounded", False),
    ("DO $$ BEGIN PERFORM 1; END $$", "unknown", "bounded", "bounded", True),
    ('REINDEX TABLE "t"', "SHARE", "bounded", "bounded", True),
    ('CLUSTER "t" USING "i"', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
    ('REFRESH MATERIALIZED VIEW "m"', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
    ("VACUUM FULL \"t\"", "ACCESS EXCLUSIVE", "unbounded", "unbounded", True),
    ('ALTER TABLE "t" SET TABLESPACE "fast"', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
    ('ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE ("a") DEFERRABLE INITIALLY DEFERRED', "ACCESS EXCLUSIVE",
     "bounded", "rewritten", True),
    # Django removes a foreign key with one string of two statements: judged by its first
    # word (SET) the ALTER ran without a lock timeout and queued traffic behind a report.
    ('SET CONSTRAINTS "t_fk" IMMEDIATE; ALTER TABLE "t" DROP CONSTRAINT "t_fk"', "ACCESS EXCLUSIVE", "bounded",
     "bounded", False),
    ('SELECT 1; ALTER TABLE "t" ALTER COLUMN "v" TYPE bigint', "ACCESS EXCLUSIVE", "bounded", "bounded", True),
])
def test_every_statement_gets_its_lock_and_disposition(sql, lock, disposition_atomic, disposition_non_atomic,
                                                       blocking):
    assert describe_statement_lock(sql, atomic=True)[0].startswith(lock)
    assert describe_statement_lock(sql, atomic=True)[1] == disposition_atomic
    assert describe_statement_lock(sql, atomic=False)[1] == disposition_non_atomic
    assert describe_statement_lock(sql, atomic=False, rewrite_enabled=False)[1] != "rewritten"
    assert bool(classify(sql).work) is blocking


def test_rewrites_keep_parameters_with_the_column_they_belong_to():
    sql = 'ALTER TABLE "t" ADD COLUMN "c" varchar(5) DEFAULT %s NOT NULL UNIQUE'
    steps = rewrite.plan(sql, ["x"], unique_name=lambda t, c: f"{t}_{c}_uniq")
    assert [(s.sql, s.params, s.kind) for s in steps] == [
        ('ALTER TABLE "t" ADD COLUMN "c" varchar(5) DEFAULT %s NOT NULL', ["x"], rewrite.BOUNDED),
        ('CREATE UNIQUE INDEX CONCURRENTLY "t_c_uniq" ON "t" ("c")', None, rewrite.CONCURRENT),
        ('ALTER TABLE "t" ADD CONSTRAINT "t_c_uniq" UNIQUE USING INDEX "t_c_uniq"', None, rewrite.BOUNDED),
    ]
    # A deferrable unique constraint attaches a plain unique index too (PostgreSQL makes it non-immediate).
    steps = rewrite.plan('ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE ("a") DEFERRABLE INITIALLY DEFERRED', None,
                         unique_name=str)
    assert [s.sql for s in steps] == ['CREATE UNIQUE INDEX CONCURRENTLY "u" ON "t" ("a")',
                                      'ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE USING INDEX "u" DEFERRABLE '
                                      'INITIALLY DEFERRED']


def test_stages_from_settings_per_app_and_per_migration():
    plain = Migration("0007_drop_x", "otherapp")
    plain.operations = [migrations.RemoveField("thing", "x")]
    assert migration_stage(plain) is Stage.EXPAND
    with override_settings(SAFEMIGRATE={"STAGES": {"otherapp.0007_drop_x": "contract"}}):
        assert migration_stage(plain) is Stage.CONTRACT
    with override_settings(SAFEMIGRATE={"STAGES": {"otherapp": "contract"}}):
        assert migration_stage(plain) is Stage.CONTRACT
    declared = Migration("0008_declared", "otherapp")
    declared.stage = "expand"
    with override_settings(SAFEMIGRATE={"STAGES": {"otherapp": "contract"}}):
        assert migration_stage(declared) is Stage.EXPAND, "the migration's own stage beats the app default"
    with override_settings(SAFEMIGRATE={"STAGES": {"otherapp.0008_declared": "contract"}}):
        assert migration_stage(declared) is Stage.CONTRACT, "a per-migration setting beats everything"


def test_a_third_party_removal_is_held_back_by_the_stages_setting(tmp_path, busy):
    item, parent, _ = busy
    execute(f'ALTER TABLE "{item}" ADD COLUMN legacy text')
    files = {
        "0001_initial.py": state_only_initial(item, parent, extra_fields='\n            ("legacy", models.TextField(null=True)),'),
        "0002_remove_legacy.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RemoveField("item", "legacy")]
""",
    }
    with override_settings(SAFEMIGRATE={"STAGES": {"billing.0002_remove_legacy": "contract"}}), \
            temporary_migration_modules(tmp_path, {"billing": files}):
        out, _ = run_command("migrate", "billing", "--noinput")
        assert "Held back 1 contract migration(s)" in out and "billing.0002_remove_legacy" in out
        assert "legacy" in {c for (c,) in execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [item])}
        run_command("migrate_contract", "billing", "--noinput")
    assert "legacy" not in {c for (c,) in execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [item])}


def test_annotate_plan_shows_each_statement_lock_and_what_atomic_prevents(tmp_path, busy):
    item, parent, _ = busy
    body = """
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AddIndex("item", models.Index(fields=["v"], name="ann_v_idx")),
                  migrations.RunSQL('ALTER TABLE "{item}" ADD COLUMN flag int', migrations.RunSQL.noop)]
""".replace("{item}", item)
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": HEADER + "class Migration(migrations.Migration):" + body}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        loader = MigrationLoader(connection)
        lines = annotate_plan(loader, [(loader.get_migration("billing", "0002_atomic"), False)])
        index_line = next(line for line in lines if "CREATE INDEX" in line)
        # By default (ATOMIC_INDEX_BUILDS "before") the build moves before the transaction.
        assert index_line.endswith("[SHARE (writes wait while it builds the index); built concurrently before "
                                   "the transaction]"), index_line
        assert any(f'before the transaction: CREATE INDEX CONCURRENTLY "ann_v_idx" ON "{item}"' in line
                   for line in lines), lines
        alter_line = next(line for line in lines if "ADD COLUMN flag" in line)
        assert alter_line.endswith("; bounded]")
        with override_settings(SAFEMIGRATE={"ATOMIC_INDEX_BUILDS": {"default": "inside"}}):
            lines = annotate_plan(loader, [(loader.get_migration("billing", "0002_atomic"), False)])
        index_line = next(line for line in lines if "CREATE INDEX" in line)
        assert "[SHARE (writes wait while it builds the index); bounded]" in index_line
        assert "NOT MADE SAFE (atomic migration: set atomic = False to rewrite it)" in index_line
        # The rest of the migration decides: after an ALTER of the same table the build stays inside.
        migration = loader.get_migration("billing", "0002_atomic")
        migration.operations = migration.operations[::-1]
        lines = annotate_plan(loader, [(migration, False)])
        index_line = next(line for line in lines if "CREATE INDEX" in line)
        assert (f"NOT MADE SAFE (atomic migration and an earlier statement of the migration changes {item}: set "
                f"atomic = False to rewrite it)") in index_line, index_line
        migration.operations = migration.operations[::-1]
        loader.get_migration("billing", "0002_atomic").atomic = False
        lines = annotate_plan(loader, [(loader.get_migration("billing", "0002_atomic"), False)])
        assert next(line for line in lines if "CREATE INDEX" in line).endswith("; rewritten]")


def test_failed_concurrent_unique_build_leaves_no_invalid_index(tmp_path, busy):
    item, parent, _ = busy
    execute(f'UPDATE "{item}" SET v = 1 WHERE id <= 2')
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_unique.py": HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AlterUniqueTogether("item", {("v", "label")}), ]
""".replace('("v", "label")', '("v",)')}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        with pytest.raises(Exception, match="could not create unique index"):
            run_command("migrate", "billing", "--noinput")
    assert all(valid for _, valid in indexes(item).values()), indexes(item)
    assert [kind for kind, _ in constraints(item).values()] == ["p"]


def test_exhausted_whole_migration_retries_name_the_blocker_and_record_nothing(tmp_path, busy):
    item, parent, _ = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_alter.py": HEADER + f"""
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AddField("item", "note", models.TextField(null=True))]
"""}
    holder = connections.create_connection("default")
    try:
        with temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "0001", "--noinput")
            with holder.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f'SELECT * FROM "{item}" LIMIT 1 /* the nightly report */')
                with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 50, "LOCK_RETRIES": 2,
                                                    "RETRY_BACKOFF_BASE_MS": 1}):
                    with pytest.raises(LockTimeoutExhausted) as caught:
                        run_command("migrate", "billing", "--noinput")
                cursor.execute("ROLLBACK")
    finally:
        holder.close()
    assert "nightly report" in str(caught.value) and "migration was rolled back" in str(caught.value)
    assert caught.value.attempts == 3
    assert execute("SELECT count(*) FROM django_migrations WHERE app = 'billing'")[0][0] == 1


@pytest.mark.parametrize("settings", [
    {"STAGES": {"otherapp": "later"}},
    {"STAGES": ["otherapp"]},
    {"REWRITE_PLAIN_OPERATIONS": {"default": "yes"}},
])
def test_bad_stage_or_rewrite_settings_are_reported(settings):
    from safemigrate.checks import check_settings

    with override_settings(SAFEMIGRATE=settings):
        assert [error.id for error in check_settings()] == ["safemigrate.E005"]
    with override_settings(SAFEMIGRATE={"STAGES": {"a.0001_x": "contract"},
                                        "REWRITE_PLAIN_OPERATIONS": {"default": False, "b": True}}):
        assert check_settings() == []


def test_a_lock_timeout_inside_a_transaction_of_a_non_atomic_migration_fails_without_retry(tmp_path, busy):
    item, parent, _ = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_python.py": HEADER + f"""
def alter(apps, schema_editor):
    schema_editor.execute('ALTER TABLE "{item}" ADD COLUMN py int')


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(alter, atomic=True)]
"""}
    holder = connections.create_connection("default")
    try:
        with temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "0001", "--noinput")
            with holder.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f'SELECT * FROM "{item}" LIMIT 1')
                with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 50}):
                    with pytest.raises(Exception, match="lock timeout"):
                        run_command("migrate", "billing", "--noinput")
                cursor.execute("ROLLBACK")
    finally:
        holder.close()
    assert execute("SELECT count(*) FROM django_migrations WHERE app = 'billing'")[0][0] == 1


def test_safemigrate_operations_get_no_false_not_made_safe_lines(tmp_path, busy):
    """SET NOT NULL after a validated CHECK and an in-place widening do no long work: no warning."""
    item, parent, _ = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_safe.py": HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [
        safemigrate.operations.SetNotNull("item", "label", models.CharField(max_length=20)),
        safemigrate.operations.ChangeTypeViaCopy("item", "label", models.CharField(max_length=40)),
    ]
"""}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        out, err = run_command("migrate", "billing", "--noinput")
    assert "set not null using the validated check" in out
    assert "not made safe" not in out + err, err


def test_safemigrate_steps_inside_an_atomic_migration_leave_the_retry_to_the_whole_migration(tmp_path, busy):
    """No double retry: run_ddl does not retry in a savepoint; each migration attempt tries once."""
    item, parent, _ = busy
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_add.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [safemigrate.operations.AddColumnNullable("item", "note", models.TextField(null=True))]
"""}
    holder = connections.create_connection("default")
    try:
        with temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "0001", "--noinput")
            with holder.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f'SELECT * FROM "{item}" LIMIT 1')
                with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 50, "LOCK_RETRIES": 2,
                                                    "RETRY_BACKOFF_BASE_MS": 1}):
                    with pytest.raises(LockTimeoutExhausted) as caught:
                        run_command("migrate", "billing", "--noinput")
                cursor.execute("ROLLBACK")
    finally:
        holder.close()
    assert "migration was rolled back" in str(caught.value), "the whole migration retried, not run_ddl"
    assert caught.value.attempts == 3


def test_no_not_made_safe_line_for_a_table_without_rows(tmp_path, busy):
    item, parent, _ = busy
    execute(f'TRUNCATE "{item}"')
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_index.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AddIndex("item", models.Index(fields=["v"], name="empty_v_idx"))]
"""}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        out, err = run_command("migrate", "billing", "--noinput")
    assert "not made safe" not in out + err
    assert "empty_v_idx" in indexes(item)


def _hold_for(table, seconds):
    """A session reading ``table`` for ``seconds`` (ACCESS SHARE held throughout); returns once it holds it."""
    import threading
    import time

    import psycopg

    from tests.scratch_project import server_url

    url = server_url(connection.settings_dict["NAME"])

    def hold():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET application_name = 'holder_{table}'")
            conn.execute(f'SELECT pg_sleep({seconds}) FROM "{table}" LIMIT 1')

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    for _ in range(200):
        if execute("SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = %s "
                   "AND l.relation = to_regclass(%s) AND l.granted", [f"holder_{table}", f'"{table}"']):
            break
        time.sleep(0.01)
    return thread


def _two_tables(item, parent, before_parent=""):
    return HEADER + f"""
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.AddField("item", "note", models.TextField(null=True)),{before_parent}
        migrations.AddField("parent", "note", models.TextField(null=True)),
    ]
"""


def _migrate_while_held(tmp_path, item, parent, seconds, work=""):
    """Apply billing 0002 (both tables changed) while a session reads ``parent`` for ``seconds``.

    Returns (the retry lines of stderr, every statement the migration sent, in order).
    """
    files = {"0001_initial.py": state_only_initial(item, parent), "0002_two.py": _two_tables(item, parent, work)}
    statements = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        holder = _hold_for(parent, seconds)
        with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 30,
                                            "RETRY_BACKOFF_BASE_MS": 20, "RETRY_BACKOFF_MAX_MS": 50}):
            with connection.execute_wrapper(record):
                _, err = run_command("migrate", "billing", "--noinput")
        holder.join()
    return [line for line in err.splitlines() if "whole migration was rolled back" in line], statements


def test_a_second_tables_lock_is_waited_for_briefly_and_taken_first_on_the_retry(tmp_path, busy):
    """pg.lock_order: the migration holds item while it asks for parent, so it asks for 50 ms, not 200.

    The retry locks parent first, while it holds nothing, with the whole lock_timeout.
    """
    item, parent, _ = busy
    retries, statements = _migrate_while_held(tmp_path, item, parent, 0.8)
    assert retries and f"lock on {parent} not granted within 50 ms" in retries[0], retries
    assert "that lock is taken first next time" in retries[0], retries
    # Later attempts wait for parent with the whole lock_timeout, holding nothing yet.
    assert all(f"lock on {parent} not granted within 200 ms" in line for line in retries[1:]), retries
    lock_parent = f'LOCK TABLE ONLY "{parent}" IN ACCESS EXCLUSIVE MODE'
    alter_item = next(s for s in reversed(statements) if s.startswith(f'ALTER TABLE "{item}" ADD COLUMN'))
    last = len(statements) - 1 - statements[::-1].index(alter_item)
    assert lock_parent in statements[:last], "the successful attempt locked parent before item"
    assert "note" in {c for (c,) in execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [parent])}


def test_a_table_reached_after_long_work_is_not_locked_first(tmp_path, busy):
    """Locked first, parent would be held through the 300 ms of work before it: it is waited for whole instead."""
    item, parent, _ = busy
    work = '\n        migrations.RunSQL("SELECT pg_sleep(0.3)", migrations.RunSQL.noop),'
    retries, statements = _migrate_while_held(tmp_path, item, parent, 1.2, work)
    assert len(retries) >= 2, retries
    assert f"lock on {parent} not granted within 50 ms" in retries[0], retries
    assert not any("taken first" in line for line in retries), retries
    assert all(f"lock on {parent} not granted within 200 ms" in line for line in retries[1:]), retries
    # Only the first attempt's brief request: later attempts wait in the statement itself.
    assert sum(s.startswith(f'LOCK TABLE ONLY "{parent}"') for s in statements) == 1, statements
