"""kill -9 at each step of a rename window: the state is whole, and running the command again finishes.

Each step is one transaction, so a kill leaves the state before it or after
it. The kills here land while the step waits for its lock behind a long
report query (the retry loop runs, the transaction is open): the expand, a
later release's column added through the window (the view is dropped and
re-created in that transaction), and the contract. The full fault profile
(``python -m tests.faults rename_field``) kills the generated migrations at
spread points too.
"""

import signal
import subprocess
import sys
import time

import psycopg
import pytest

from safemigrate.pg import views

TABLE = "relapp_item"
V0 = """
class Item(models.Model):
    title = models.CharField(max_length=50)
    code = models.IntegerField(unique=True)
"""
V1 = V0.replace("title =", "headline =")
V2 = V1 + "    note = models.TextField(null=True)\n"


pytestmark = pytest.mark.project(safemigrate={"LOCK_RETRIES": 200, "RETRY_BACKOFF_MAX_MS": 200})


class Report:
    """A long report query holding ACCESS SHARE on the table until released."""

    def __init__(self, project):
        self.conn = psycopg.connect(project.url)
        self.conn.execute(f"SELECT count(*) FROM {TABLE}")  # opens the transaction, takes the lock

    def release(self):
        self.conn.rollback()
        self.conn.close()


def kill_while_waiting(project, *command):
    """Start ``command``, let it retry its lock behind a report for a while, then SIGKILL it."""
    report = Report(project)
    process = subprocess.Popen([sys.executable, "-m", "django", *command], cwd=project.root, env=project.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not project.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND datname = current_database()"):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the command never waited for its lock"
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        report.release()
    assert process.returncode == -signal.SIGKILL
    # The killed client's backend ends its statement within lock_timeout; wait for it to go.
    deadline = time.monotonic() + 30
    while project.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state <> 'idle'") and time.monotonic() < deadline:
        time.sleep(0.1)


def kind(project, name):
    rows = project.query("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name])
    return rows[0][0] if rows else None


def columns(project, relation):
    return {name for (name,) in project.query(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        [relation])}


def test_a_kill_at_each_window_step_leaves_a_whole_state_that_a_rerun_finishes(project):
    project.models(V0)
    project.run("makemigrations", "relapp", "--noinput")
    project.run("migrate", "--noinput")
    project.query(f"INSERT INTO {TABLE} (title, code) SELECT 't' || i, i FROM generate_series(1, 1000) i")
    project.models(V1)
    project.run("makemigrations", "relapp", "--safe", input="y\n")

    # Expand, killed while waiting for its lock: nothing of the window exists; the re-run opens it.
    kill_while_waiting(project, "migrate", "--noinput")
    assert kind(project, TABLE) == "r" and kind(project, views.base_name(TABLE)) is None
    assert columns(project, TABLE) == {"id", "title", "code"}
    project.run("migrate", "--noinput")
    assert kind(project, TABLE) == "v" and columns(project, TABLE) == {"id", "headline", "code", "title"}

    # A later release adds a column through the window (view dropped and re-created in one transaction).
    project.models(V2)
    project.run("makemigrations", "relapp", "--safe")
    kill_while_waiting(project, "migrate", "--noinput")
    assert kind(project, TABLE) == "v" and columns(project, TABLE) == {"id", "headline", "code", "title"}
    assert "note" not in columns(project, views.base_name(TABLE))
    project.run("migrate", "--noinput")
    assert columns(project, TABLE) == {"id", "headline", "code", "title", "note"}

    # Contract, killed while waiting: the window is intact; the re-run closes it.
    kill_while_waiting(project, "migrate_contract", "--noinput")
    assert kind(project, TABLE) == "v" and "title" in columns(project, TABLE)
    project.run("migrate_contract", "--noinput")
    assert kind(project, TABLE) == "r" and kind(project, views.base_name(TABLE)) is None
    assert columns(project, TABLE) == {"id", "headline", "code", "note"}
    assert project.query(f"SELECT count(*), count(DISTINCT headline) FROM {TABLE}") == [(1000, 1000)]
    check = project.run("makemigrations", "--check", "--dry-run", "relapp", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
