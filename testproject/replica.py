"""A private primary + streaming replica pair, for tests of replica-aware code.

The test server (``testproject.pgserver``) is a lone server, so nothing that
reads ``pg_stat_replication`` can be checked against it. ``start_pair()``
starts a second, separate primary and a hot-standby replica made from it
with ``pg_basebackup -R``, from the same PostgreSQL binaries as the test
server, in one throw-away directory: both listen on Unix sockets in that
directory only (ports 5432 and 5433 name the two socket files), and are
stopped and deleted by ``ReplicaPair.stop()`` (or at exit).

initdb's default ``pg_hba.conf`` already has ``local replication all trust``
(with ``--auth=trust``), and the defaults ``wal_level = replica`` and
``max_wal_senders = 10`` allow streaming, so the primary needs no special
configuration. The replica reports its position every second
(``wal_receiver_status_interval = 1s`` instead of 10 s), so tests that
wait for the primary to notice a change do not wait long.
"""

import atexit
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from testproject.pgserver import SERVER_PROGRAMS, SERVER_SETTINGS, _run, configure, private_directory

PAIR_SETTINGS = {**SERVER_SETTINGS, "shared_buffers": "32MB", "max_connections": "50"}
REPLICA_SETTINGS = {"port": "5433", "wal_receiver_status_interval": "1s", "hot_standby": "on"}


@dataclass
class ReplicaPair:
    directory: Path  # the servers' own directory: data directories, sockets, logs
    bindir: Path
    user: "object | None"  # the pwd entry the servers run as (root only)
    base: Path  # everything, removed by stop()

    @property
    def primary_url(self):
        return f"postgresql://postgres@/postgres?host={self.directory}&port=5432"

    @property
    def replica_url(self):
        return f"postgresql://postgres@/postgres?host={self.directory}&port=5433"

    def primary(self, **kwargs):
        """A new psycopg connection to the primary (autocommit)."""
        return psycopg.connect(host=str(self.directory), port=5432, user="postgres", dbname="postgres",
                               autocommit=True, **kwargs)

    def replica(self, **kwargs):
        """A new psycopg connection to the replica (read-only, autocommit)."""
        return psycopg.connect(host=str(self.directory), port=5433, user="postgres", dbname="postgres",
                               autocommit=True, **kwargs)

    def wait_streaming(self, timeout=30):
        """Wait until the primary sees the replica streaming."""
        deadline = time.monotonic() + timeout
        with self.primary() as conn:
            while True:
                state = conn.execute("SELECT state FROM pg_stat_replication").fetchone()
                if state and state[0] == "streaming":
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica not streaming after {timeout}s (state {state})")
                time.sleep(0.1)

    def wait_replayed(self, timeout=30):
        """Wait until the replica has replayed everything the primary has written so far."""
        with self.primary() as conn:
            target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        with self.replica() as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", [target]).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica did not replay up to {target} within {timeout}s")
                time.sleep(0.05)

    def stop(self):
        for name in ("replica", "primary"):
            pgdata = self.directory / name
            if (pgdata / "postmaster.pid").exists():
                try:
                    _run([self.bindir / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"], self.user,
                         self.directory)
                except RuntimeError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


def start_pair():
    """Start a primary and a streaming hot-standby replica of it; returns a ``ReplicaPair``."""
    bindir, user, base, directory = private_directory((*SERVER_PROGRAMS, "pg_basebackup"))
    pair = ReplicaPair(directory, bindir, user, base)
    atexit.register(pair.stop)
    primary, replica = directory / "primary", directory / "replica"
    try:
        _run([bindir / "initdb", "-D", primary, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], user, directory)
        configure(primary, directory, PAIR_SETTINGS)
        _run([bindir / "pg_ctl", "-D", primary, "-l", directory / "primary.log", "-w", "-t", "60", "start"], user, directory)
        # -R writes standby.signal and primary_conninfo (the socket directory, port 5432).
        _run([bindir / "pg_basebackup", "-D", replica, "-R", "-X", "stream", "-c", "fast", "--no-sync",
              "-d", f"host={directory} port=5432 user=postgres"], user, directory)
        configure(replica, directory, REPLICA_SETTINGS)
        _run([bindir / "pg_ctl", "-D", replica, "-l", directory / "replica.log", "-w", "-t", "60", "start"], user, directory)
        pair.wait_streaming()
    except BaseException:
        pair.stop()
        raise
    return pair
