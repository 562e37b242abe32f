"""``migrate`` through a real PgBouncer, in transaction and in session pooling mode.

What docs/pages/pgbouncer.md promises, checked: deploys (an index built
concurrently, a backfill, two runs at once) succeed through the pooler, and
afterwards no advisory lock is held and no server connection of the pool
carries a session setting left by safemigrate.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connection, connections

from tests.test_runlock import RLAPP, fill, index_valid
from tests.utils import ADVISORY_LOCKS_HERE

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
)
POOL_SIZE = 4
PORT = 6432
RUN_AS = "safemigrate_pg"  # the user testproject/pgserver.py runs the server as
#: Parameters PgBouncer itself tracks per client and sets on each server
#: connection it lends (its SETs show up as session settings).
POOLER_TRACKED = ("application_name", "client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings")

pytestmark = pytest.mark.skipif(
    PGBOUNCER is None,
    reason="PGBOUNCER TESTS SKIPPED: the pgbouncer binary is not installed "
    "(apt-get install pgbouncer); the pooler promises in docs/pages/pgbouncer.md are NOT checked",
)


class PgBouncer:
    """A PgBouncer on a Unix socket in a private directory, in front of the test server."""

    def __init__(self, mode):
        self.mode = mode
        self.dir = Path(tempfile.mkdtemp(prefix="safemigrate-pgbouncer-"))
        settings = connection.settings_dict
        (self.dir / "users.txt").write_text(f'"{settings["USER"] or "postgres"}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={settings['HOST']} port={settings['PORT'] or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr =\n"
            f"listen_port = {PORT}\n"
            f"unix_socket_dir = {self.dir}\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {mode}\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 200\n"
            "server_reset_query = DISCARD ALL\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        kwargs = {}
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            pwd.getpwnam(RUN_AS)
            self.dir.chmod(0o755)
            for path in [self.dir, *self.dir.iterdir()]:
                shutil.chown(path, RUN_AS, RUN_AS)
            # The server user's own group only: the private server's socket
            # directory is reachable through that group (testproject/pgserver.py).
            user = pwd.getpwnam(RUN_AS)
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.dir / "pgbouncer.ini")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, **kwargs,
        )
        socket = self.dir / f".s.PGSQL.{PORT}"
        deadline = time.monotonic() + 20
        while not socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start:\n{self.log()}")
            time.sleep(0.05)

    def url(self, dbname):
        user = connection.settings_dict["USER"] or "postgres"
        return f"postgresql://{user}@:{PORT}/{dbname}?host={self.dir}"

    def connect(self, dbname):
        user = connection.settings_dict["USER"] or "postgres"
        return psycopg.connect(host=str(self.dir), port=PORT, dbname=dbname, user=user, autocommit=True,
                               prepare_threshold=None)

    def log(self):
        path = self.dir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


#: Tests take ``make_project`` before ``bouncer``: the pooler stops (letting go of its server
#: connections) before the project's database is dropped.
@pytest.fixture(params=["transaction", "session"])
def bouncer(request):
    pooler = PgBouncer(request.param)
    yield pooler
    pooler.stop()


def server_connections_state(project, bouncer):
    """(server pids of the pool, {pid: session settings}) seen through the pooler.

    Every client below sits in an open transaction, so each one pins a
    different server connection; with as many clients as the pool may have
    server connections, every server connection is inspected.
    """
    with project.admin() as admin:
        pool_pids = {pid for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
            [project.dbname],
        )}
    clients = [bouncer.connect(project.dbname) for _ in range(POOL_SIZE)]
    seen = {}
    try:
        for client in clients:
            client.execute("BEGIN")
            pid, settings = client.execute(
                "SELECT pg_backend_pid(), coalesce(array_agg(name || '=' || setting ORDER BY name) "
                "FILTER (WHERE source = 'session' AND name <> ALL(%s)), '{}') FROM pg_settings",
                [list(POOLER_TRACKED)],
            ).fetchone()
            seen[pid] = settings
    finally:
        for client in clients:
            client.close()
    return pool_pids, seen


def test_migrate_through_pgbouncer_leaves_no_lock_and_no_session_setting(make_project, bouncer):
    project = make_project(url=bouncer.url, **RLAPP)
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output + bouncer.log()
    fill(project, 100_000)
    # Two deploy jobs at once through the pooler: an index build and a backfill.
    runs = [project.job() for _ in range(2)]
    results = [(process.communicate(timeout=180)[0], process.returncode) for process in runs]
    assert [code for _, code in results] == [0, 0], results
    assert sum("Applying rlapp.0002_index" in output for output, _ in results) == 1, results
    code, output = project.migrate()
    assert code == 0 and "No migrations to apply" in output, output
    assert project.applied() == {"0001_initial", "0002_index", "0003_backfill", "0004_flag_not_null"}
    assert index_valid(project) is True
    assert project.query("SELECT count(*) FROM rl_item WHERE flag IS DISTINCT FROM mod(v, 7)") == [(0,)]
    # 0004 (SET NOT NULL via a NOT VALID check) ran lock-bounded DDL and a validation.
    code, output = project.migrate(command="migrate_contract")
    assert code == 0, output
    assert project.query(
        "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'rl_item' AND column_name = 'flag'"
    ) == [("NO",)]

    assert project.query(ADVISORY_LOCKS_HERE) == [(0,)]
    pool_pids, seen = server_connections_state(project, bouncer)
    assert pool_pids, "no server connection was pooled"
    assert pool_pids <= set(seen), (pool_pids, seen)
    assert all(settings == [] for settings in seen.values()), seen


def test_a_connection_through_pgbouncer_is_recognised_as_not_direct(make_project, bouncer, transactional_db):
    project = make_project(url=bouncer.url, **RLAPP)
    from safemigrate.pg.session import is_direct

    settings = dict(connection.settings_dict, NAME=project.dbname, HOST=str(bouncer.dir), PORT=str(PORT))
    # The served alias: django.contrib.postgres looks every new connection's alias up.
    pooled = type(connections["default"])(settings, alias=connection.alias)
    try:
        assert is_direct(pooled) is False
    finally:
        pooled.close()


def test_server_side_timeouts_are_refused_through_pgbouncer(make_project, bouncer):
    """A role/database statement_timeout would need a session SET, which the pooler would keep."""
    project = make_project(url=bouncer.url, **RLAPP)
    with project.admin() as admin:  # before any server connection opens
        admin.execute(f'ALTER DATABASE "{project.dbname}" SET statement_timeout = \'30s\'')
    code, output = project.migrate("rlapp", "0001")
    assert code == 0, output
    fill(project, 1000)
    code, output = project.migrate("rlapp", "0002")
    assert code != 0
    assert "SessionSettingRefused" in output and "direct connection" in output, output
    assert index_valid(project) is None  # nothing was started
    pool_pids, seen = server_connections_state(project, bouncer)
    assert all(settings == [] for settings in seen.values()), seen
