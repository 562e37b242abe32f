"""A throw-away Django project on its own database, driven by real commands in subprocesses.

Used by the multi-release and gate tests: each release edits ``models.py``
and runs ``makemigrations`` / ``migrate`` / ``migrate_contract`` exactly as a
team would, against a database created for the test and dropped after it.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from testproject.pgserver import database_url

REPO = Path(__file__).resolve().parent.parent
APP = "relapp"


def _url_for(dbname):
    parts = urlsplit(database_url())
    return urlunsplit(parts._replace(path="/" + dbname))


class ReleaseProject:
    def __init__(self, root, settings_extra=""):
        self.root = Path(root)
        self.dbname = f"sm_rel_{uuid.uuid4().hex[:10]}"
        self.url = _url_for(self.dbname)
        self.app = self.root / APP
        self.migrations = self.app / "migrations"
        self.migrations.mkdir(parents=True)
        (self.app / "__init__.py").write_text("")
        (self.migrations / "__init__.py").write_text("")
        (self.root / "rel_settings.py").write_text(textwrap.dedent(f"""
            from testproject.settings import *  # noqa
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "safemigrate",
                              "{APP}"]
        """) + textwrap.dedent(settings_extra))
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def env(self, root=None, **extra):
        return dict(os.environ, DJANGO_SETTINGS_MODULE="rel_settings", DATABASE_URL=self.url,
                    PYTHONPATH=os.pathsep.join([str(root or self.root), str(REPO)]), **extra)

    def snapshot(self, dest):
        """A copy of the code as it is now (an older release once the project moves on)."""
        dest = Path(dest)
        shutil.copytree(self.app, dest / APP)
        shutil.copy(self.root / "rel_settings.py", dest / "rel_settings.py")
        return dest

    def models(self, source):
        (self.app / "models.py").write_text("from django.db import models\n" + textwrap.dedent(source))

    def run(self, *args, input=None, check=True):
        result = subprocess.run([sys.executable, "-m", "django", *args], cwd=self.root, env=self.env(),
                                input=input, capture_output=True, text=True, timeout=180)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def popen(self, code, root=None):
        """A Python process running ``code`` with this project's settings (an app server stand-in)."""
        root = root or self.root
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=root, env=self.env(root),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def files(self):
        return sorted(p.stem for p in self.migrations.glob("0*.py"))

    def source(self, prefix):
        (path,) = [p for p in self.migrations.glob(f"{prefix}*.py")]
        return path.read_text()

    def query(self, sql, params=None):
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def columns(self, table=f"{APP}_item"):
        return {name for (name,) in self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table])}

    def applied(self):
        return {name for (name,) in self.query("SELECT name FROM django_migrations WHERE app = %s", [APP])}

    def assert_django_tooling_clean(self):
        """showmigrations lists every migration, makemigrations --check finds nothing, --merge no conflict."""
        shown = self.run("showmigrations", APP)
        for name in self.files():
            assert name in shown.stdout, shown.stdout
        check = self.run("makemigrations", "--check", "--dry-run", APP, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        merge = self.run("makemigrations", "--merge", "--noinput", APP)
        assert "No conflicts detected to merge." in merge.stdout, merge.stdout

    def drop(self):
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
