"""Overhead of safemigrate's commands against plain Django on a big project.

    python benchmarks/overhead.py [--models 300] [--repeat 3]

Generates an app with N models (a few fields each, every fifth with a
foreign key), applies its initial migration, then changes every third model
(a NOT NULL field with a default, a rename, a new index) and times, in
subprocesses as a user would run them:

- ``makemigrations --dry-run`` (plain Django) vs ``makemigrations --safe --dry-run``
- a no-op ``migrate`` with plain Django vs with safemigrate installed

Prints the median seconds and the ratio safemigrate / plain for each.
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

from _common import REPO, scratch_database


def models_source(count, changed):
    lines = ["from django.db import models", ""]
    for i in range(count):
        name = "title" if not (changed and i % 3 == 1) else "heading"
        lines.append(f"class Model{i}(models.Model):")
        lines.append(f"    {name} = models.CharField(max_length=100)")
        lines.append("    amount = models.IntegerField(default=0)")
        lines.append("    created = models.DateTimeField(auto_now_add=True)")
        if i % 5 == 4:
            lines.append(f"    parent = models.ForeignKey('Model{i - 1}', models.CASCADE, null=True)")
        if changed and i % 3 == 0:
            lines.append("    currency = models.CharField(max_length=3, default='EUR')")
        if changed and i % 3 == 2:
            lines.append("    class Meta:")
            lines.append(f"        indexes = [models.Index(fields=['amount'], name='m{i}_amount_idx')]")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_project(root, count):
    app = root / "benchapp"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(models_source(count, changed=False))
    base = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger"]
    for flavour, apps in (("plain", base + ["benchapp"]), ("safe", base + ["safemigrate", "benchapp"])):
        (root / f"bench_{flavour}.py").write_text(textwrap.dedent(f"""
            from testproject.settings import *  # noqa
            INSTALLED_APPS = {apps!r}
        """))


def run(root, flavour, *args, answers=""):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=f"bench_{flavour}",
               PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "django", *args], cwd=root, env=env, input=answers,
                            capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{flavour} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return elapsed


def median_time(repeat, *args, **kwargs):
    return statistics.median(run(*args, **kwargs) for _ in range(repeat))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with scratch_database("sm_bench_overhead"), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, options.models)
        run(root, "plain", "makemigrations", "benchapp", "--noinput")
        run(root, "safe", "migrate", "--noinput")
        (root / "benchapp" / "models.py").write_text(models_source(options.models, changed=True))
        answers = "y\n" * options.models
        rows = []
        plain = median_time(options.repeat, root, "plain", "makemigrations", "benchapp", "--dry-run", answers=answers)
        safe = median_time(options.repeat, root, "safe", "makemigrations", "benchapp", "--dry-run", "--safe",
                           answers=answers)
        rows.append(("makemigrations (changes to 1/3 of the models)", plain, safe))
        plain = median_time(options.repeat, root, "plain", "migrate", "--noinput")
        safe = median_time(options.repeat, root, "safe", "migrate", "--noinput")
        rows.append(("no-op migrate", plain, safe))
        print(f"project: {options.models} models; median of {options.repeat} runs, including process start")
        for title, plain, safe in rows:
            print(f"{title:<48} plain {plain:6.2f} s   safemigrate {safe:6.2f} s   ratio {safe / plain:.2f}")
        print(f"makemigrations_ratio={rows[0][2] / rows[0][1]:.2f} migrate_noop_ratio={rows[1][2] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
