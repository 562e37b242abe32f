"""Atomic migrations nobody wrote for safemigrate: their index builds move before the transaction (issue 21).

A third-party or older migration is atomic (Django's default). Its plain
``CREATE INDEX`` / ``ADD CONSTRAINT ... UNIQUE`` used to run inside the
transaction: the lock request was bounded, the build under the lock was not
(seconds of stalled writes on a few million rows). ``pg.prebuild`` builds
such indexes CONCURRENTLY before the transaction when the rest of the
migration allows it (``SAFEMIGRATE["ATOMIC_INDEX_BUILDS"]``, default
"before"). These tests hold each promise of docs/pages/locks.md: traffic never
waits past the bound, the schema is Django's, a failed migration leaves no
index behind, a killed one is finished by the next run, and what must stay
in the transaction stays there with the reason printed.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection, models
from django.test import override_settings

from safemigrate.pg import prebuild
from tests.test_execution_traffic import (  # noqa: F401  (busy: a fixture)
    BOUND,
    FAST_RETRIES,
    ROWS,
    HEADER,
    busy,
    constraints,
    indexes,
    state_only_initial,
)
from tests.traffic import Blocker, Traffic
from tests.utils import execute, run_command, temporary_migration_modules, version_of_model

REPO = Path(__file__).resolve().parent.parent


def unique_name(table, column):
    return f"{table}_{column}_uniq"


def plan(*statements, ready=None):
    ready = ready or (lambda table: None)
    return prebuild.plan_statements(list(statements), ready, unique_name)


# -- which statements move: decided from the SQL alone ------------------------------------


def test_plan_moves_index_builds_and_unique_constraints():
    result = plan('CREATE INDEX "i" ON "t" ("a");',
                  'ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE ("a", "b");',
                  'ALTER TABLE "t" ADD CONSTRAINT "d" UNIQUE ("b") DEFERRABLE INITIALLY DEFERRED;')
    assert [(b.index, b.build, b.replacement) for b in result.builds] == [
        ("i", 'CREATE INDEX CONCURRENTLY "i" ON "t" ("a")', None),
        ("u", 'CREATE UNIQUE INDEX CONCURRENTLY "u" ON "t" ("a", "b")',
         'ALTER TABLE "t" ADD CONSTRAINT "u" UNIQUE USING INDEX "u"'),
        ("d", 'CREATE UNIQUE INDEX CONCURRENTLY "d" ON "t" ("b")',
         'ALTER TABLE "t" ADD CONSTRAINT "d" UNIQUE USING INDEX "d" DEFERRABLE INITIALLY DEFERRED'),
    ]
    assert result.kept == {}


def test_plan_keeps_a_build_after_a_change_of_its_table():
    result = plan('ALTER TABLE "t" ADD COLUMN "c" integer NULL;', 'CREATE INDEX "i" ON "t" ("c");',
                  'CREATE INDEX "j" ON "other" ("x");')
    assert [b.index for b in result.builds] == ["j"]
    assert result.reason('CREATE INDEX "i" ON "t" ("c")') == "an earlier statement of the migration changes t"


def test_plan_keeps_everything_after_python_or_sql_it_cannot_read():
    after_python = plan("-- THIS OPERATION CANNOT BE WRITTEN AS SQL", 'CREATE INDEX "i" ON "t" ("a");')
    assert after_python.builds == [] and "runs Python" in after_python.reason('CREATE INDEX "i" ON "t" ("a")')
    after_sql = plan("DO $$ BEGIN PERFORM 1; END $$;", 'CREATE INDEX "i" ON "t" ("a");')
    assert after_sql.builds == [] and "may change any table" in after_sql.reason('CREATE INDEX "i" ON "t" ("a")')


def test_plan_keeps_builds_on_new_or_empty_tables_and_constraints_that_validate():
    result = plan('CREATE INDEX "i" ON "t" ("a");',
                  'ALTER TABLE "t" ADD CONSTRAINT "f" FOREIGN KEY ("p") REFERENCES "p" ("id");',
                  ready=lambda table: "the table has no rows (the build is instant)" if table == "t" else None)
    assert result.builds == []
    assert result.reason('CREATE INDEX "i" ON "t" ("a")') == "the table has no rows (the build is instant)"
    assert result.reason('ALTER TABLE "t" ADD CONSTRAINT "f" FOREIGN KEY ("p") REFERENCES "p" ("id")') == \
        "no concurrent equivalent that can run before the transaction"


# -- under traffic ----------------------------------------------------------------------


def unique_together_migration(item, extra=""):
    """billing 0002, atomic, as a third-party app writes it: unique_together, an index, a unique field."""
    return HEADER + f"""
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.AlterUniqueTogether("item", {{("v", "label")}}),
        migrations.AddIndex("item", models.Index(fields=["label"], name="atomic_label_idx")),
        migrations.AlterField("item", "label", models.CharField(max_length=20, null=True, unique=True)),{extra}
    ]
"""


def unique_writes(table, rows=100_000):
    """The old code's inserts and updates, every label its own (the new constraints make labels unique)."""
    Item = version_of_model("Item", {"v": models.IntegerField(), "label": models.CharField(max_length=20, null=True)},
                            table)

    run = uuid.uuid4().hex[:6]  # several runs on one table never repeat a label

    def work(index, iteration):
        if iteration % 2:
            Item.objects.create(v=rows + 1_000_000 * (index + 1) + iteration, label=f"w{run}{index}-{iteration}")
        else:
            row = Item.objects.filter(pk=(iteration * 7919) % rows + 1).first()
            row.label = f"u{run}{index}-{iteration}"
            row.save(update_fields=["label"])

    return work


def deploy_under_traffic(item, action):
    traffic = Traffic("old code", unique_writes(item))
    with Blocker(item, hold=1.2) as blocker:
        traffic.start()
        time.sleep(0.3)
        output = action()
        time.sleep(0.3)
        result = traffic.stop()
    print(result)
    assert not blocker.errors and blocker.holds >= 1
    assert result.errors == [], result.errors[:1]
    return output, result


@pytest.mark.traffic
def test_atomic_unique_together_and_indexes_do_not_stall_traffic(tmp_path, busy):
    item, parent, _ = busy
    execute(f'UPDATE "{item}" SET label = \'l\' || id')  # unique, as the new constraints need
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": unique_together_migration(item)}
    with override_settings(SAFEMIGRATE=FAST_RETRIES), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        (out, err), result = deploy_under_traffic(item, lambda: run_command("migrate", "billing", "--noinput"))
        assert result.slow(BOUND) == [], str(result)
        assert "built before the migration's transaction" in err and "not made safe" not in err, err
        kinds = constraints(item)
        assert sorted(kind for kind, _ in kinds.values()) == ["p", "u", "u"], kinds
        defs = indexes(item)
        assert all(valid for _, valid in defs.values()), defs
        assert "atomic_label_idx" in defs
        assert any("UNIQUE" in d and "(v, label)" in d for d, _ in defs.values()), defs
        assert any("varchar_pattern_ops" in d for d, _ in defs.values()), defs
        # Backwards re-creates nothing but drops: bounded as before.
        deploy_under_traffic(item, lambda: run_command("migrate", "billing", "0001", "--noinput"))
        assert sorted(indexes(item)) == [f"{item}_pkey"]


@pytest.mark.traffic
def test_inside_the_transaction_the_same_migration_stalls_writes(tmp_path, busy):
    """The contrast (ATOMIC_INDEX_BUILDS "inside"): every write waits for the unique build.

    On 1M rows, not the 100k of the other tests: there the four builds can
    finish inside 100 ms on a fast machine (a CI run saw a worst wait of
    211 ms, the lock_timeout queue alone), and a contrast that depends on the
    machine's speed proves nothing. At 1M rows the builds take seconds here
    and well over the bound on any machine this suite runs on.
    """
    item, parent, _ = busy
    execute(f'UPDATE "{item}" SET label = \'l\' || id')
    execute(f'INSERT INTO "{item}" (v, label) SELECT i, \'l\' || i FROM generate_series({ROWS + 1}, 1000000) i')
    execute(f'ANALYZE "{item}"')
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": unique_together_migration(item)}
    settings = {**FAST_RETRIES, "ATOMIC_INDEX_BUILDS": {"default": "inside"}}
    with override_settings(SAFEMIGRATE=settings), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        (_, err), result = deploy_under_traffic(item, lambda: run_command("migrate", "billing", "--noinput"))
    assert "not made safe" in err and "built before" not in err
    assert result.slow(BOUND), f"expected writes to wait for the build inside the transaction: {result}"


def test_what_the_rest_keeps_inside_is_reported_with_the_reason(tmp_path, busy):
    item, parent, _ = busy
    extra = """
        migrations.AddField("item", "code", models.IntegerField(null=True)),
        migrations.AlterUniqueTogether("item", {("v", "label"), ("v", "code")}),"""
    execute(f'UPDATE "{item}" SET label = \'l\' || id')
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": unique_together_migration(item, extra)}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        _, err = run_command("migrate", "billing", "--noinput")
    lines = [line for line in err.splitlines() if "not made safe" in line]
    assert len(lines) == 1 and "(v, code)" in lines[0].replace('"', ""), lines
    assert f"an earlier statement of the migration changes {item}" in lines[0], lines
    # (v, label), the index, the unique field and its _like index
    assert err.count("built before the migration's transaction") == 4, err
    assert sorted(kind for kind, _ in constraints(item).values()) == ["p", "u", "u", "u"]


def test_a_failed_migration_drops_the_indexes_built_for_it(tmp_path, busy):
    item, parent, _ = busy
    execute(f'UPDATE "{item}" SET label = \'l\' || id')
    failing = """
        migrations.RunSQL("SELECT 1 / 0", migrations.RunSQL.noop),"""
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": unique_together_migration(item, failing)}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        with pytest.raises(Exception, match="division by zero"):
            run_command("migrate", "billing", "--noinput")
    assert sorted(indexes(item)) == [f"{item}_pkey"], "the schema is as it was"
    assert sorted(kind for kind, _ in constraints(item).values()) == ["p"]
    assert not execute("SELECT 1 FROM django_migrations WHERE app = 'billing' AND name = '0002_atomic'")


def test_duplicates_fail_as_in_plain_django_and_leave_nothing(tmp_path, busy):
    item, parent, _ = busy  # labels repeat for no two rows... but (v, label) does after this:
    execute(f'UPDATE "{item}" SET v = 1, label = \'same\' WHERE id <= 2')
    files = {"0001_initial.py": state_only_initial(item, parent),
             "0002_atomic.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AlterUniqueTogether("item", {("v", "label")})]
"""}
    with temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "0001", "--noinput")
        with pytest.raises(Exception, match="could not create unique index|duplicate key"):
            run_command("migrate", "billing", "--noinput")
    assert sorted(indexes(item)) == [f"{item}_pkey"]
    assert all(valid for _, valid in indexes(item).values())


# -- kill -9 ------------------------------------------------------------------------------

SETTINGS = """
from testproject.settings import *  # noqa: F401,F403
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "safemigrate", "billing"]
MIGRATION_MODULES = {"billing": "billing_migrations"}
SAFEMIGRATE = {"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}
"""


def server_params(dbname):
    settings = connection.settings_dict
    params = {"dbname": dbname, "user": settings["USER"] or "postgres", "host": settings["HOST"]}
    if settings["PORT"]:
        params["port"] = settings["PORT"]
    if settings["PASSWORD"]:
        params["password"] = settings["PASSWORD"]
    return params


@pytest.fixture
def killable(tmp_path, transactional_db):
    """A project in a subprocess: billing's atomic unique_together migration over a 300k-row table."""
    dbname = f"ab_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(**server_params("postgres"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    (tmp_path / "billing").mkdir()
    (tmp_path / "billing" / "__init__.py").write_text("")
    (tmp_path / "billing_migrations").mkdir()
    (tmp_path / "billing_migrations" / "__init__.py").write_text("")
    (tmp_path / "billing_migrations" / "0001_initial.py").write_text(state_only_initial("item", "parent"))
    (tmp_path / "billing_migrations" / "0002_atomic.py").write_text(unique_together_migration("item"))
    (tmp_path / "ab_settings.py").write_text(textwrap.dedent(SETTINGS))
    params = server_params(dbname)
    port = f":{params['port']}" if "port" in params else ""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="ab_settings", PYTHONUNBUFFERED="1",
               DATABASE_URL=f"postgresql://{params['user']}@{port}/{dbname}?host={params['host']}",
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("CREATE TABLE parent (id bigserial PRIMARY KEY)")
        conn.execute("CREATE TABLE item (id bigserial PRIMARY KEY, v int NOT NULL, label varchar(20))")
        conn.execute("INSERT INTO item (v, label) SELECT i, 'l' || i FROM generate_series(1, 300000) i")

    def migrate(*args, kill_after=None):
        process = subprocess.Popen([sys.executable, "-m", "django", "migrate", "billing", *args, "--noinput"],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if kill_after is None:
            return process.communicate(timeout=300)[0], process.returncode
        text, deadline = "", None
        for line in process.stdout:
            text += line
            if deadline is None and kill_after[0] in line:
                deadline = time.monotonic() + kill_after[1]
                time.sleep(kill_after[1])
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
        return text, process.returncode

    def query(sql):
        with psycopg.connect(**params, autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    migrate.query = query
    yield migrate
    admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    admin.close()


@pytest.mark.parametrize("line, delay", [
    ("built before the migration's transaction", 0.05),  # mid-build: an INVALID index is left
    ("built before the migration's transaction", 0.6),
    ("atomic_label_idx", 0.3),  # the second build
    ("_like", 0.05),  # the last build, or the transaction after it
    ("_like", 0.5),
])
def test_a_killed_run_is_finished_by_the_next(killable, line, delay):
    output, code = killable("0001")
    assert code == 0, output
    output, code = killable(kill_after=(line, delay))
    assert code in (-signal.SIGKILL, 0), output
    left = killable.query("SELECT (SELECT count(*) FROM pg_index WHERE NOT indisvalid), "
                          "(SELECT count(*) FROM pg_indexes WHERE tablename = 'item')")
    print(f"killed ({code}) after {line!r} + {delay}s: (invalid, indexes) left = {left}")
    output, code = killable()
    assert code == 0, output
    assert killable.query("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert killable.query("SELECT count(*) FROM pg_constraint WHERE conrelid = 'item'::regclass "
                          "AND contype = 'u'") == [(2,)]
    assert killable.query("SELECT count(*) FROM pg_indexes WHERE tablename = 'item'") == [(5,)]
    assert killable.query("SELECT count(*) FROM django_migrations WHERE name = '0002_atomic'") == [(1,)]
