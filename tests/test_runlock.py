"""The run lock and leftovers of killed runs, with real ``migrate`` processes.

Each test gets a throw-away project (``project`` fixture: an app with an
index built concurrently and a backfill, on a database of its own), and runs
``python -m django migrate`` in subprocesses, as deploy jobs do.
"""

import os
import re
import signal
import threading
import time

import pytest
from django.db import connection, connections
from django.db.utils import OperationalError as DjangoOperationalError

from safemigrate.pg import runlock
from tests.utils import ADVISORY_LOCKS_HERE

INDEX = "rl_item_note_idx"

MODELS = """
from django.db import models


class Item(models.Model):
    v = models.IntegerField()
    note = models.TextField(null=True)
    flag = models.IntegerField()

    class Meta:
        db_table = "rl_item"
        indexes = [models.Index(fields=["note"], name="rl_item_note_idx")]
"""

MIGRATIONS = {
    "0001_initial.py": """
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel("Item", [
            ("id", models.BigAutoField(primary_key=True)),
            ("v", models.IntegerField()),
            ("note", models.TextField(null=True)),
            ("flag", models.IntegerField(null=True)),
        ], options={"db_table": "rl_item"}),
    ]
""",
    "0002_index.py": """
from django.db import migrations, models
import safemigrate.operations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rlapp", "0001_initial")]
    operations = [
        safemigrate.operations.CreateIndexConcurrently(
            "item", models.Index(fields=["note"], name="rl_item_note_idx")),
    ]
""",
    "0003_backfill.py": """
from django.db import migrations
import safemigrate.operations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rlapp", "0002_index")]
    operations = [
        safemigrate.operations.Backfill("item", set={"flag": "mod(v, 7)"}, where="flag IS NULL"),
    ]
""",
    "0004_flag_not_null.py": """
from django.db import migrations, models
import safemigrate.operations


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("rlapp", "0003_backfill")]
    operations = [
        safemigrate.operations.SetNotNull("item", "flag", models.IntegerField()),
    ]
""",
}

#: The project of these tests (``make_project(**RLAPP)`` elsewhere).
RLAPP = {"app": "rlapp", "models": MODELS, "migrations": MIGRATIONS}
pytestmark = pytest.mark.project(**RLAPP)


def fill(project, rows):
    with project.db() as conn:
        conn.execute(
            "INSERT INTO rl_item (v, note) SELECT i, md5(i::text) FROM generate_series(1, %s) AS g(i)", [rows]
        )
        conn.execute("ANALYZE rl_item")


def index_valid(project):
    rows = project.query(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        [INDEX],
    )
    return rows[0][0] if rows else None


def test_two_migrate_processes_on_an_index_build_both_finish(project):
    """The hang this lock replaced: a blocked pg_advisory_lock held a snapshot
    that the other run's CREATE INDEX CONCURRENTLY waited for, forever."""
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 300_000)
    started = time.monotonic()
    runs = [project.job() for _ in range(2)]
    outputs = []
    for process in runs:
        output, _ = process.communicate(timeout=120)
        outputs.append((process.returncode, output))
    elapsed = time.monotonic() - started
    print(f"two concurrent migrate runs finished in {elapsed:.1f}s")
    assert [code for code, _ in outputs] == [0, 0], outputs
    assert elapsed < 90, f"two runs took {elapsed:.0f}s"
    assert project.applied() == {"0001_initial", "0002_index", "0003_backfill", "0004_flag_not_null"}
    assert index_valid(project) is True
    assert project.query("SELECT count(*) FROM rl_item WHERE flag IS DISTINCT FROM mod(v, 7)") == [(0,)]
    # One run did the work; the other waited for the lock, then found nothing to do.
    assert sum("Applying rlapp.0002_index" in output for _, output in outputs) == 1
    assert any("waiting for it to finish" in output for _, output in outputs), outputs
    assert project.query(ADVISORY_LOCKS_HERE) == [(0,)]


def _wait_for(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def _building_backend(project, phase_prefix):
    rows = project.query(
        "SELECT p.pid FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid) "
        "WHERE a.datname = current_database() AND p.phase LIKE %s",
        [phase_prefix + "%"],
    )
    return rows[0][0] if rows else None


def _backend_alive(project, pid):
    return bool(project.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", [pid]))


def test_kill_during_an_index_build_then_an_immediate_rerun_succeeds(project):
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 2_500_000)
    process = project.job("rlapp", "0002")
    orphan = _wait_for(lambda: _building_backend(project, "building index"), 60)
    assert orphan, "the index build never started: " + (process.communicate(timeout=60)[0] if process.poll() else "")
    killed_at = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    # client_connection_check_interval (1 s by default) lets the server stop the orphan.
    gone = _wait_for(lambda: not _backend_alive(project, orphan), 10, interval=0.05)
    print(f"orphaned index build ended {time.monotonic() - killed_at:.2f}s after the kill")
    code, output = project.migrate("rlapp", "0002")
    assert code == 0, output
    assert gone, "the server kept the dead client's index build running"
    assert index_valid(project) is True
    assert project.applied() == {"0001_initial", "0002_index"}


@pytest.mark.parametrize("mode", ["wait", "cancel"])
def test_rerun_waits_for_or_cancels_what_a_killed_run_left_running(project, mode):
    """Without the server's client check, the killed run's statement keeps going."""
    settings = {"CLIENT_CHECK_INTERVAL_MS": None, "ORPHANS": mode, "ORPHAN_WAIT_S": 60}
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 50_000)
    writer = project.db()
    writer.execute("BEGIN")
    writer.execute("UPDATE rl_item SET v = v WHERE id = 1")  # the index build waits for this writer
    try:
        process = project.job("rlapp", "0002", safemigrate=settings)
        orphan = _wait_for(lambda: _building_backend(project, "waiting for writers"), 60)
        assert orphan, "the index build never started waiting"
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        time.sleep(1.5)
        assert _backend_alive(project, orphan), "expected the orphaned build to outlive its client"
        rerun = project.job("rlapp", "0002", safemigrate=settings)
        # Wait for the re-run itself to be on the database (its own tagged connection):
        # a slow interpreter start must not let the orphan end before the re-run looks.
        assert _wait_for(lambda: project.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'safemigrate:%%' "
            "AND application_name NOT LIKE '%%:lock' AND pid <> %s AND datname = current_database()", [orphan])[0][0], 60, interval=0.05), \
            "the re-run never connected"
        if mode == "cancel":
            assert _wait_for(lambda: not _backend_alive(project, orphan), 30, interval=0.05)
        else:
            time.sleep(2)
            assert _backend_alive(project, orphan)
            assert rerun.poll() is None, "the re-run did not wait for the orphan"
        writer.execute("ROLLBACK")
        output, _ = rerun.communicate(timeout=120)
    finally:
        writer.close()
    assert rerun.returncode == 0, output
    assert "Statements of an earlier migration run that no longer exists" in output
    assert str(orphan) in output
    assert index_valid(project) is True
    assert project.applied() == {"0001_initial", "0002_index"}


def test_orphans_that_do_not_end_fail_the_run_naming_them(project):
    settings = {"CLIENT_CHECK_INTERVAL_MS": None, "ORPHANS": "wait", "ORPHAN_WAIT_S": 2}
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 1000)
    writer = project.db()
    writer.execute("BEGIN")
    writer.execute("UPDATE rl_item SET v = v WHERE id = 1")
    try:
        process = project.job("rlapp", "0002", safemigrate=settings)
        orphan = _wait_for(lambda: _building_backend(project, "waiting for writers"), 60)
        assert orphan
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        code, output = project.migrate("rlapp", "0002", safemigrate=settings)
    finally:
        writer.close()
    assert code != 0
    assert "OrphanedWorkError" in output and str(orphan) in output and "pg_cancel_backend" in output
    assert project.applied() == {"0001_initial"}


def _hold_run_lock(project):
    holder = project.db()
    holder.execute("SET application_name = 'deploy-job-A'")
    holder.execute("BEGIN")
    holder.execute("SELECT pg_advisory_xact_lock(%s)", [72_617_001])
    return holder


def test_read_only_invocations_do_not_wait_for_a_running_migration(project):
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    holder = _hold_run_lock(project)
    try:
        for args in (["--plan"], ["--check"]):
            started = time.monotonic()
            code, output = project.migrate(*args, timeout=60)
            assert time.monotonic() - started < 30
            assert "waiting for it to finish" not in output, output
            assert code == (0 if args == ["--plan"] else 1), output
            assert "rlapp.0002_index" in output or args == ["--check"]
        for args in (["--plan"], ["--check"]):
            started = time.monotonic()
            code, output = project.migrate(*args, command="migrate_contract", timeout=60)
            assert time.monotonic() - started < 30
            assert "waiting for it to finish" not in output and code in (0, 1), output
    finally:
        holder.close()


def test_a_run_gives_up_after_the_wait_bound_naming_the_holder(project):
    holder = _hold_run_lock(project)
    try:
        pid = holder.info.backend_pid
        started = time.monotonic()
        code, output = project.migrate(safemigrate={"RUN_LOCK_WAIT_S": 2})
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert code != 0
    assert "RunLockTimeout" in output
    assert f"backend pid {pid}" in output and "'deploy-job-A'" in output and "after 2s" in output
    assert re.search(r"client (a local Unix socket|[0-9a-f.:]+:\d+),", output), output
    assert "since 20" in output
    assert elapsed < 30
    assert project.applied() == set()


def test_pool_option_three_migrates_in_one_process_and_a_down_database(project):
    pytest.importorskip("psycopg_pool")
    result = project.python(
        """
        import django
        django.setup()
        from django.core.management import call_command
        for _ in range(3):
            call_command("migrate", "--noinput", verbosity=0)
        print("three runs ok")
        """,
        pool={"min_size": 1, "max_size": 2, "timeout": 5},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "three runs ok" in result.stdout
    assert project.applied() == {"0001_initial", "0002_index", "0003_backfill", "0004_flag_not_null"}
    project.url_for = lambda dbname: f"postgresql://postgres@/{dbname}?host=/nonexistent-socket-dir"
    result = project.python(
        """
        import django
        django.setup()
        import django.db.utils
        from django.core.management import call_command
        try:
            call_command("migrate", "--noinput", verbosity=0)
        except django.db.utils.OperationalError as exc:
            print("django OperationalError:", type(exc).__module__)
        """,
        pool={"min_size": 1, "max_size": 2, "timeout": 5},
    )
    assert "django OperationalError: django.db.utils" in result.stdout, result.stdout + result.stderr


def test_lock_connection_errors_are_djangos(transactional_db):
    settings = dict(connection.settings_dict, HOST="/nonexistent-socket-dir")
    down = type(connections["default"])(settings, alias="down")
    with pytest.raises(DjangoOperationalError):
        with runlock.run_lock(down):
            pass


def test_the_holding_transaction_holds_no_snapshot_and_no_other_lock(transactional_db):
    """Why a concurrent index build never waits for the lock holder."""
    with runlock.run_lock(connection) as run_id:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.state, a.backend_xmin, a.backend_xid, "
                "(SELECT array_agg(DISTINCT locktype) FROM pg_locks l WHERE l.pid = a.pid AND l.granted) "
                "FROM pg_stat_activity a WHERE a.application_name = %s",
                [runlock.run_tag("migrate", run_id, lock=True)],
            )
            state, xmin, xid, locktypes = cursor.fetchone()
            cursor.execute("SHOW application_name")
            tagged_as = cursor.fetchone()[0]
    assert state == "idle in transaction"
    assert xmin is None and xid is None
    assert set(locktypes) == {"advisory", "virtualxid"}
    assert tagged_as == runlock.run_tag("migrate", run_id)
    with connection.cursor() as cursor:
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] != tagged_as
        cursor.execute(ADVISORY_LOCKS_HERE)
        assert cursor.fetchone()[0] == 0


def test_a_waiting_run_holds_nothing_between_polls(transactional_db):
    """The waiter's backend is idle outside a transaction between attempts."""
    errors = []
    holding, release = threading.Event(), threading.Event()

    def first():
        try:
            with runlock.run_lock(connections["default"]):
                holding.set()
                release.wait(10)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(10)
    messages = []
    waiter = threading.Thread(target=lambda: _second(messages, errors))
    waiter.start()
    time.sleep(0.5)
    samples = []
    with connection.cursor() as cursor:
        for _ in range(10):
            cursor.execute(
                "SELECT a.state, a.backend_xmin FROM pg_stat_activity a "
                "WHERE a.application_name LIKE 'safemigrate:%%:lock' AND a.datname = current_database() AND NOT EXISTS "
                "(SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)"
            )
            samples.extend(cursor.fetchall())
            time.sleep(0.1)
    release.set()
    thread.join(10)
    waiter.join(10)
    assert errors == []
    idle = [xmin for state, xmin in samples if state == "idle"]
    # A poll takes a millisecond; nearly every sample must find the waiter idle, holding no snapshot.
    assert len(samples) == 10 and len(idle) >= 8 and all(xmin is None for xmin in idle), samples
    assert messages and "waiting for it to finish" in messages[0]


def _second(messages, errors):
    try:
        with runlock.run_lock(connections["default"], echo=messages.append):
            pass
    except Exception as exc:  # pragma: no cover - reported by the caller
        errors.append(exc)
    finally:
        connections.close_all()


@pytest.mark.parametrize(
    "key, value",
    [("ORPHANS", "kill"), ("ORPHAN_WAIT_S", 0), ("RUN_LOCK_WAIT_S", -1), ("CLIENT_CHECK_INTERVAL_MS", 0)],
)
def test_bad_run_lock_settings_are_reported(key, value, settings):
    from safemigrate.checks import check_settings

    settings.SAFEMIGRATE = {key: value}
    errors = check_settings()
    assert [error.id for error in errors] == ["safemigrate.E003"] and key in errors[0].msg
    settings.SAFEMIGRATE = {"ORPHANS": "cancel", "CLIENT_CHECK_INTERVAL_MS": None}
    assert check_settings() == []


def test_server_idle_and_transaction_timeouts_do_not_end_the_lock_early(project):
    """The lock's transaction sits idle for the whole run; its own timeouts are off."""
    with project.admin() as admin:
        version = admin.info.server_version
        admin.execute(f'ALTER DATABASE "{project.dbname}" SET idle_in_transaction_session_timeout = \'300ms\'')
        if version >= 170000:
            admin.execute(f'ALTER DATABASE "{project.dbname}" SET transaction_timeout = \'300ms\'')
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 1000)
    writer = project.db()
    writer.execute("SET idle_in_transaction_session_timeout = 0")
    if version >= 170000:
        writer.execute("SET transaction_timeout = 0")
    writer.execute("BEGIN")
    writer.execute("UPDATE rl_item SET v = v WHERE id = 1")  # keeps the index build (and the run) going
    try:
        process = project.job("rlapp", "0002")
        assert _wait_for(lambda: _building_backend(project, "waiting for writers"), 60)
        time.sleep(1.5)
        holders = project.query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
        )  # this project's database: a parallel test worker may hold its own run lock
        writer.execute("ROLLBACK")
        output, _ = process.communicate(timeout=120)
    finally:
        writer.close()
    assert process.returncode == 0, output
    assert len(holders) == 1 and holders[0][0].startswith("safemigrate:migrate:"), holders
    assert "lock's connection was lost" not in output, output


def test_killing_a_waiting_run_leaves_nothing_waiting_on_the_server(project):
    holder = _hold_run_lock(project)
    try:
        process = project.job()
        assert _wait_for(lambda: project.query(  # the waiter connected
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND pid <> %s AND backend_type = 'client backend'", [holder.info.backend_pid]), 60)
        time.sleep(1.0)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        # Its backend was idle between polls, so it ends with the client, at once.
        left = _wait_for(lambda: not project.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND pid <> %s AND state <> 'idle' AND backend_type = 'client backend'", [holder.info.backend_pid]),
            5)
    finally:
        holder.close()
    assert left, "a killed waiter left a backend waiting for the lock"
    code, output = project.migrate()
    assert code == 0 and "waiting" not in output, output


def test_connection_created_receivers_can_look_up_the_lock_connections_alias(transactional_db):
    """django.contrib.postgres's receiver does ``connections[connection.alias]`` for every new connection.

    The lock connection had an alias of its own that ``connections`` does not know, so every
    ``migrate`` in a project with django.contrib.postgres failed (found by django-pgtrigger's suite).
    """
    from django.core.management import call_command
    from django.db import connections
    from django.db.backends.signals import connection_created

    seen = []

    def look_up(sender, connection, **kwargs):
        seen.append(connections[connection.alias].alias)

    connection_created.connect(look_up)
    try:
        call_command("migrate", verbosity=0)
    finally:
        connection_created.disconnect(look_up)
    assert seen, "the lock connection was opened through Django (connection_created fired)"
