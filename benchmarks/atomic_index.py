"""How long reads and writes stall while a migration adds ``unique_together`` and an index.

    python benchmarks/atomic_index.py [--rows N] [--variants a,b,...]

The same change, four ways, each on a fresh table of ``--rows`` rows
(default 2,000,000) with reads and writes running against it:

- ``django``: plain Django (safemigrate not installed), an atomic migration;
- ``inside``: safemigrate installed, the same atomic migration, with
  ``ATOMIC_INDEX_BUILDS = "inside"`` (the behaviour before issue 21: the lock
  request bounded, the build under it not);
- ``before``: the same atomic migration with the default
  ``ATOMIC_INDEX_BUILDS = "before"`` (built concurrently before the transaction);
- ``safe``: the migration ``makemigrations --safe`` writes
  (``AlterUniqueTogetherConcurrently``, non-atomic).

For each: the migration's duration, and the worst and p99 wait of a point
read and of a point write, and how many waited longer than 300 ms
(lock_timeout 200 ms + 100 ms).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from _common import REPO, dsn, percentile, scratch_database

MODELS = """
from django.db import models

class Item(models.Model):
    name = models.CharField(max_length=50)
    points = models.IntegerField(default=0)
{meta}
"""
META = """
    class Meta:
        unique_together = [("name", "points")]
        indexes = [models.Index(fields=["points"], name="bench_points_idx")]
"""
INITIAL = """
from django.db import migrations, models

class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [migrations.CreateModel("Item", [
        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
        ("name", models.CharField(max_length=50)),
        ("points", models.IntegerField(default=0)),
    ])]
"""
PLAIN = """
from django.db import migrations, models

class Migration(migrations.Migration):
    dependencies = [("bench", "0001_initial")]
    operations = [
        migrations.AlterUniqueTogether("item", {("name", "points")}),
        migrations.AddIndex("item", models.Index(fields=["points"], name="bench_points_idx")),
    ]
"""
SETTINGS = """
import json, os
from testproject.settings import *  # noqa: F401,F403
INSTALLED_APPS = json.loads(os.environ["BENCH_APPS"])
MIGRATION_MODULES = {"bench": "bench_migrations"}
SAFEMIGRATE = json.loads(os.environ.get("BENCH_SAFEMIGRATE", "{}"))
"""


def project(root, variant):
    (root / "bench").mkdir()
    (root / "bench" / "__init__.py").write_text("")
    (root / "bench" / "models.py").write_text(MODELS.format(meta=""))
    (root / "bench_migrations").mkdir()
    (root / "bench_migrations" / "__init__.py").write_text("")
    (root / "bench_migrations" / "0001_initial.py").write_text(INITIAL)
    (root / "bench_settings.py").write_text(textwrap.dedent(SETTINGS))
    apps = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "bench"]
    if variant != "django":
        apps.insert(3, "safemigrate")
    settings = {"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 100, "RETRY_BACKOFF_MAX_MS": 400}
    if variant == "inside":
        settings["ATOMIC_INDEX_BUILDS"] = {"default": "inside"}
    return dict(os.environ, DJANGO_SETTINGS_MODULE="bench_settings", BENCH_APPS=json.dumps(apps),
                BENCH_SAFEMIGRATE=json.dumps(settings), PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))


def manage(root, env, *args, stdin=None):
    result = subprocess.run([sys.executable, "-m", "django", *args], cwd=root, env=env, capture_output=True,
                            text=True, input=stdin, timeout=3600)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


class Load(threading.Thread):
    """Point reads or point writes in a loop, timing each."""

    def __init__(self, conninfo, table, rows, kind):
        super().__init__(daemon=True)
        self.conninfo, self.table, self.rows, self.kind = conninfo, table, rows, kind
        self.latencies, self.errors = [], []
        self.stopping = threading.Event()

    def run(self):
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            i = 0
            while not self.stopping.is_set():
                i += 1
                key = (i * 7919) % self.rows + 1
                started = time.monotonic()
                try:
                    if self.kind == "read":
                        conn.execute(f'SELECT name FROM "{self.table}" WHERE id = %s', [key]).fetchone()
                    else:
                        conn.execute(f'UPDATE "{self.table}" SET name = %s WHERE id = %s', [f"w{i}-{key}", key])
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self.errors.append(str(exc))
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.002)

    def stop(self):
        self.stopping.set()
        self.join(60)


def run(variant, rows):
    import psycopg

    with scratch_database(f"ab_{variant}") as name, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = project(root, variant)
        env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        manage(root, env, "migrate", "--noinput", *(["--all-stages"] if variant != "django" else []))
        conninfo = dsn(name)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("INSERT INTO bench_item (name, points) SELECT 'n' || i, i FROM generate_series(1, %s) i",
                         [rows])
            conn.execute("ANALYZE bench_item")
        (root / "bench" / "models.py").write_text(MODELS.format(meta=META))
        if variant == "safe":
            manage(root, env, "makemigrations", "bench", "--safe", "--noinput")
        else:
            (root / "bench_migrations" / "0002_unique.py").write_text(PLAIN)
        loads = [Load(conninfo, "bench_item", rows, kind) for kind in ("read", "read", "write")]
        for load in loads:
            load.start()
        time.sleep(0.5)
        started = time.monotonic()
        manage(root, env, "migrate", "--noinput")
        seconds = time.monotonic() - started
        time.sleep(0.5)
        for load in loads:
            load.stop()
    figures = {"variant": variant, "rows": rows, "migrate_s": round(seconds, 2)}
    for kind in ("read", "write"):
        latencies = [x for load in loads if load.kind == kind for x in load.latencies]
        figures[f"{kind}_worst_ms"] = round(max(latencies, default=0) * 1000)
        figures[f"{kind}_p99_ms"] = round(percentile(latencies, 99) * 1000, 1)
        figures[f"{kind}_over_300ms"] = sum(1 for x in latencies if x > 0.3)
        figures[f"{kind}_errors"] = sum(len(load.errors) for load in loads if load.kind == kind)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--variants", default="django,inside,before,safe")
    options = parser.parse_args(argv)
    for variant in options.variants.split(","):
        figures = run(variant, options.rows)
        print(" ".join(f"{key}={value}" for key, value in figures.items()), flush=True)


if __name__ == "__main__":
    main()
