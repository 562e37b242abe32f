"""What the contract gate costs the application and the deploy job.

1. start-up: ``gate.application_name()`` (a listing of every app's migration
   package, then a hash), with a generated app of ``--migrations`` files;
2. per connection: ``psycopg.connect`` with and without ``application_name``
   (it is a startup parameter, so the expected difference is noise);
3. per ``migrate_contract``: the ``pg_stat_activity`` query with ``--sessions``
   announcing connections open.

Usage: python benchmarks/gate.py [--migrations N] [--connects N] [--sessions N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import REPO, dsn, percentile, scratch_database

STARTUP = """
import time, django
django.setup()
from safemigrate.planning import gate
start = time.perf_counter()
for _ in range(20):
    names = gate.application_name()
print(f"{(time.perf_counter() - start) / 20 * 1000:.3f} {len(gate.migration_names())}")
"""


def startup_cost(migrations):
    root = Path(tempfile.mkdtemp())
    package = root / "benchapp" / "migrations"
    package.mkdir(parents=True)
    (root / "benchapp" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for number in range(1, migrations + 1):
        (package / f"{number:04d}_step.py").write_text("")
    (root / "bench_settings.py").write_text(textwrap.dedent("""
        from testproject.settings import *  # noqa
        INSTALLED_APPS = [*INSTALLED_APPS, "benchapp"]
    """))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="bench_settings",
               PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", STARTUP], env=env, capture_output=True, text=True, check=True)
    ms, count = out.stdout.split()
    return float(ms), int(count)


def connect_cost(dbname, connects):
    import psycopg

    timings = {"without": [], "with": []}
    for index in range(connects * 2):
        variant = "with" if index % 2 else "without"
        extra = " application_name='sm:4f0c2a9e1b7d:4242@web-3'" if variant == "with" else ""
        start = time.perf_counter()
        psycopg.connect(dsn(dbname) + extra).close()
        timings[variant].append((time.perf_counter() - start) * 1000)
    return {key: (statistics.median(values), percentile(values, 99)) for key, values in timings.items()}


def query_cost(dbname, sessions):
    import psycopg

    held = [psycopg.connect(dsn(dbname) + f" application_name='sm:4f0c2a9e1b7d:{n}@web'") for n in range(sessions)]
    try:
        with psycopg.connect(dsn(dbname)) as conn:
            timings = []
            for _ in range(50):
                start = time.perf_counter()
                conn.execute("SELECT pid, application_name, coalesce(host(client_addr), ''), backend_start::text "
                             "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                             "AND application_name LIKE 'sm:%'").fetchall()
                timings.append((time.perf_counter() - start) * 1000)
            return statistics.median(timings)
    finally:
        for conn in held:
            conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--migrations", type=int, default=1000)
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    with scratch_database("sm_gate") as dbname:
        ms, count = startup_cost(args.migrations)
        print(f"startup: application_name() over {count} migration files: {ms:.2f} ms per call")
        for variant, (median, p99) in connect_cost(dbname, args.connects).items():
            print(f"connect {variant} application_name: median {median:.2f} ms, p99 {p99:.2f} ms")
        print(f"gate query with {args.sessions} announcing sessions: median {query_cost(dbname, args.sessions):.2f} ms")


if __name__ == "__main__":
    main()
