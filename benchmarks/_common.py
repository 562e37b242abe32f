"""Shared set-up for the benchmarks: a scratch database on the server."""

import os
import sys
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
