"""The runner as deploys use it: real ``manage.py`` processes, kill -9, PgBouncer, a task queue's job.

A throw-away project (the run-lock tests' ``rlapp``) gets an expand migration that enqueues a
non-idempotent copy, so a batch done twice or skipped shows in the data.
"""

import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from django.db import connection

from tests.test_runlock import RLAPP, fill
from tests.utils import ADVISORY_LOCKS_HERE

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pages" / "background-migrations.md"
ROWS = 20_000

#: Each batch logs its key range through a second, autocommit connection (so the log
#: survives the batch's rollback when the runner is killed) and sleeps a little, so a
#: kill lands mid-batch; the increment itself is in the batch's transaction.
BUMP = """
import os
import time

import psycopg
from django.db import migrations
from django.db.models import F

import safemigrate.operations


def bump(apps, rows):
    Item = apps.get_model("rlapp", "Item")
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as log:
        log.execute("INSERT INTO bump_log (low, high) VALUES (%s, %s)", [rows[0].pk, rows[-1].pk])
    Item.objects.filter(pk__in=[row.pk for row in rows]).update(v=F("v") + 1)
    time.sleep(0.05)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rlapp", "0001_initial")]
    operations = [safemigrate.operations.RunPythonBatched("item", bump, name="bump", background=True)]
"""

SQL_COPY = """
from django.db import migrations
import safemigrate.operations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rlapp", "0001_initial")]
    operations = [safemigrate.operations.Backfill("item", set={"v": "v + 1"}, name="bump", background=True)]
"""

SETTINGS = {"BATCH_INITIAL_SIZE": 200, "BATCH_MIN_SIZE": 100, "BATCH_MAX_SIZE": 400, "BACKGROUND_DUTY_CYCLE": 0.8}


def background(migration):
    """The run-lock project with only its first migration, then ``migration`` as ``0002_bump``."""
    return dict(RLAPP, migrations={"0001_initial.py": RLAPP["migrations"]["0001_initial.py"],
                                   "0002_bump.py": migration})


def backfills(project, *args):
    """``python -m django backfills ARGS`` in the project, as a worker would run it."""
    return project.start("backfills", *args, safemigrate=SETTINGS, stderr=subprocess.STDOUT)


@pytest.mark.project(**background(BUMP))
def test_kill_9_of_a_runner_mid_batch_redoes_at_most_one_batch_and_the_data_is_exact(project):
    code, output = project.migrate("rlapp", "0001", safemigrate=SETTINGS)
    assert code == 0, output
    fill(project, ROWS)
    with project.db() as conn:
        conn.execute("CREATE TABLE bump_log (id serial PRIMARY KEY, low bigint, high bigint)")
    started = time.monotonic()
    # Only the app: its expand migration enqueues before safemigrate's own 0001 ran (the table is
    # created on first use); the full migrate then applies 0001, which finds the table and keeps it.
    code, output = project.migrate("rlapp", safemigrate=SETTINGS)
    assert code == 0, output
    assert time.monotonic() - started < 60
    assert project.query("SELECT count(*) FROM django_migrations WHERE app = 'safemigrate'") == [(0,)]
    assert project.query("SELECT count(*) FROM rl_item WHERE v <> id") == [(0,)]  # only enqueued
    assert project.query("SELECT state FROM safemigrate_background_migration") == [("queued",)]
    code, output = project.migrate(safemigrate=SETTINGS)
    assert code == 0 and "Applying safemigrate.0001_initial... OK" in output, output
    assert project.query("SELECT state FROM safemigrate_background_migration") == [("queued",)]

    runner = backfills(project, "run")
    deadline = time.monotonic() + 60
    while project.query("SELECT count(*) FROM bump_log")[0][0] < 5:
        assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read()
        time.sleep(0.02)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    first_run = project.query("SELECT low FROM bump_log ORDER BY id")
    committed = project.query("SELECT rows FROM safemigrate_backfill_progress WHERE name = 'bump'")[0][0]
    assert 0 < committed < ROWS

    rerun = backfills(project, "run")
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "bump: finished" in output
    assert project.query("SELECT state FROM safemigrate_background_migration") == [("finished",)]
    # Exact: every row incremented once, whatever the kill interrupted.
    assert project.query("SELECT count(*) FROM rl_item WHERE v <> id + 1") == [(0,)]
    # At most one batch (the one in flight at the kill) was done again.
    lows = [low for (low,) in project.query("SELECT low FROM bump_log ORDER BY id")]
    again = len(lows) - len(set(lows))
    assert again <= 1, (again, len(first_run))


def test_two_runners_through_pgbouncer_in_transaction_mode(make_project):
    from tests.test_pgbouncer import PGBOUNCER, PgBouncer, server_connections_state

    if PGBOUNCER is None:
        pytest.skip("PGBOUNCER TESTS SKIPPED: the pgbouncer binary is not installed (apt-get install pgbouncer)")
    bouncer = PgBouncer("transaction")
    project = make_project(url=bouncer.url, **background(SQL_COPY))
    try:
        code, output = project.migrate("rlapp", "0001", safemigrate=SETTINGS)
        assert code == 0, output + bouncer.log()
        fill(project, ROWS)
        code, output = project.migrate(safemigrate=SETTINGS)
        assert code == 0, output
        runners = [backfills(project, "run") for _ in range(2)]
        results = [(process.communicate(timeout=300)[0], process.returncode) for process in runners]
        assert [code for _, code in results] == [0, 0], results
        assert project.query("SELECT count(*) FROM rl_item WHERE v <> id + 1") == [(0,)]
        assert project.query("SELECT state FROM safemigrate_background_migration") == [("finished",)]
        assert project.query(ADVISORY_LOCKS_HERE) == [(0,)]
        pool_pids, seen = server_connections_state(project, bouncer)
        assert all(settings == [] for settings in seen.values()), seen
    finally:
        bouncer.stop()  # before make_project drops the database: it lets go of the server connections


def test_the_documented_task_queue_example_runs_pending_work(tmp_path, transactional_db):
    """The example in the docs, as written; only Celery's decorator is provided (it is not a test dependency)."""
    from django.db import migrations as dj_migrations, models
    from django.test import override_settings

    from safemigrate.operations import Backfill
    from safemigrate.pg import background_state as bg
    from tests.utils import apply_operations, execute, fill_table, unique_table

    source = re.search(r"```python\n# myproject/tasks.py\n(.*?)```", DOCS.read_text(), re.S).group(1)
    celery = types.ModuleType("celery")
    celery.shared_task = lambda function: function
    sys.modules["celery"] = celery
    table = unique_table()
    try:
        from django.db.migrations.state import ModelState, ProjectState

        state = ProjectState()
        state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True)),
                                                    ("v", models.IntegerField())], options={"db_table": table}))
        apply_operations([dj_migrations.CreateModel("Item", list(state.models["shop", "item"].fields.items()),
                                                    options={"db_table": table})], atomic=True)
        fill_table(table, 2000, v="i")
        apply_operations([Backfill("item", set={"v": '"v" * 2'}, name=f"{table}-task", background=True)], state)
        namespace = {}
        exec(compile(source, "tasks.py", "exec"), namespace)
        with override_settings(SAFEMIGRATE={"BACKGROUND_DUTY_CYCLE": 1.0}):
            namespace["background_migrations"]()
        assert bg.get(connection, f"{table}-task").state == "finished"
        assert execute(f'SELECT count(*) FROM "{table}" WHERE v <> id * 2') == [(0,)]
        # A failure makes the job fail, naming it.
        apply_operations([Backfill("item", set={"v": '"v" / 0'}, name=f"{table}-bad", background=True)], state)
        with pytest.raises(RuntimeError, match=f"{table}-bad"):
            namespace["background_migrations"]()
    finally:
        del sys.modules["celery"]
        connection.close()
        execute(f'DROP TABLE IF EXISTS "{table}"')
