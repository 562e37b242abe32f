"""Shared set-up for the benchmarks: a scratch database on the server."""

import os
import random
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testproject.pgserver import database_settings, database_url  # noqa: E402


def dsn(dbname):
    settings = database_settings(database_url())
    parts = {"dbname": dbname, "user": settings["USER"] or "postgres", "host": settings["HOST"],
             "port": settings["PORT"], "password": settings["PASSWORD"]}
    return " ".join(f"{key}='{value}'" for key, value in parts.items() if value)


@contextmanager
def scratch_database(prefix):
    """Create a database, point DATABASE_URL at it, drop it afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    server = database_url()
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    try:
        yield name
    finally:
        os.environ["DATABASE_URL"] = server
        with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentile(values, pct):
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class PointTraffic(threading.Thread):
    """Point reads and writes on random rows of ``bench``, each timed with its start time.

    ``READ`` / ``WRITE``: the two statements, half of the requests each (a
    subclass names its own, e.g. writes that fire a copy's triggers).
    """

    READ = "SELECT v FROM bench WHERE id = %s"
    WRITE = "UPDATE bench SET v = v + 1 WHERE id = %s"

    def __init__(self, database, rows):
        super().__init__(daemon=True)
        self.database, self.rows = database, rows
        self.samples = []  # (start, seconds)
        self.stopping = threading.Event()

    def run(self):
        import psycopg

        with psycopg.connect(dsn(self.database), autocommit=True) as conn:
            while not self.stopping.is_set():
                key = random.randint(1, self.rows)
                started = time.monotonic()
                if random.random() < 0.5:
                    conn.execute(self.READ, [key]).fetchone()
                else:
                    conn.execute(self.WRITE, [key])
                self.samples.append((started, time.monotonic() - started))
                time.sleep(0.001)

    @property
    def latencies(self):
        return [seconds for _, seconds in self.samples]

    def during(self, start, end):
        """Latencies of the requests that overlapped ``start``..``end`` (monotonic clock)."""
        return [seconds for began, seconds in self.samples if began + seconds >= start and began <= end]

    def stop(self):
        """Stop and return every latency."""
        self.stopping.set()
        self.join(60)
        return self.latencies
