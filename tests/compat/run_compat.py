#!/usr/bin/env python
"""Run Django's own migration test suites, and django-pgtrigger's, with safemigrate installed.

safemigrate replaces ``makemigrations`` and ``migrate`` in every project that
installs it, so Django's tests of those commands are the sharpest check that
the replacements behave as Django's do. This script:

1. downloads the Django sdist matching the installed Django
   (``pip download --no-deps --no-binary :all: django==<version>``) into a
   cache directory and extracts it (the wheel has no tests);
2. makes a copy of its ``tests/runtests.py`` whose always-installed apps
   include ``pgtrigger`` and ``safemigrate`` (``runtests.py`` sets
   ``INSTALLED_APPS`` itself, so a settings module cannot add them);
3. runs the migration suites against the private PostgreSQL server of
   ``testproject.pgserver`` (or ``$DATABASE_URL``), once with safemigrate and,
   with ``--baseline``, once with plain Django, and prints tests run and
   failed for each, plus the failures that only happen with safemigrate;
4. with ``--pgtrigger-src PATH`` (a checkout of django-pgtrigger: its sdist
   has no tests), runs pgtrigger's pytest suite with safemigrate installed.

It is a separate command, not part of the pytest run (it takes minutes and
downloads Django's source). The expected differences are listed, with their
reasons, in docs/pages/compat.md.

    .venv/bin/python tests/compat/run_compat.py --baseline
"""

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITES = ["migrations", "migrations2", "migrate_signals", "migration_test_data_persistence",
          "custom_migration_operations"]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "safemigrate-compat"
OUR_APPS = ["pgtrigger", "safemigrate"]


def django_source(cache):
    """The extracted sdist of the installed Django version (downloaded once)."""
    import django

    version = django.get_version()
    target = cache / f"django-{version}"
    if (target / "tests" / "runtests.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"django-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"django=={version}", "-d", str(cache)], check=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(cache, filter="data")
        except TypeError:  # Python < 3.10.12 / 3.11.4: no extraction filters
            tar.extractall(cache)
    if not (target / "tests" / "runtests.py").exists():
        raise SystemExit(f"{archive} has no tests/runtests.py; cannot run Django's suites.")
    return target


def patched_runtests(source, with_safemigrate):
    """A copy of runtests.py that installs pgtrigger and safemigrate (or an unpatched copy)."""
    original = (source / "tests" / "runtests.py").read_text()
    anchor = '    "django.contrib.staticfiles",\n]'
    if anchor not in original:
        raise SystemExit("runtests.py no longer lists django.contrib.staticfiles last in "
                         "ALWAYS_INSTALLED_APPS; update patched_runtests() for this Django version.")
    extra = "".join(f'    "{app}",\n' for app in OUR_APPS) if with_safemigrate else ""
    name = "runtests_safemigrate.py" if with_safemigrate else "runtests_baseline.py"
    path = source / "tests" / name
    hook = COMMANDS_STAY_SAFEMIGRATES if with_safemigrate else ""
    patched = original.replace(anchor, '    "django.contrib.staticfiles",\n' + extra + "]" + hook)
    path.write_text(patched)
    return path


# Django's migration tests set ``available_apps = ["migrations"]``, which
# hides every other app's commands from ``call_command`` (Django clears the
# command cache when the available apps change). In a project safemigrate is
# installed for good, so its commands must stay the ones that run.
COMMANDS_STAY_SAFEMIGRATES = """

import django.core.management as _management

_django_get_commands = _management.get_commands


def _get_commands_with_safemigrate():
    commands = dict(_django_get_commands())
    commands.update({name: "safemigrate" for name in ("makemigrations", "migrate", "migrate_contract")})
    return commands


_get_commands_with_safemigrate.cache_clear = _django_get_commands.cache_clear
_management.get_commands = _get_commands_with_safemigrate
"""


def settings_module(directory, url):
    """Django's test settings (two aliases: some suites use ``other``) on our PostgreSQL."""
    sys.path.insert(0, str(REPO))
    from testproject.pgserver import database_settings

    default = database_settings(url)
    databases = {
        "default": dict(default, NAME="safemigrate_compat"),
        "other": dict(default, NAME="safemigrate_compat_other"),
    }
    (directory / "safemigrate_compat_settings.py").write_text(textwrap.dedent(f"""
        DATABASES = {databases!r}
        SECRET_KEY = "django_tests_secret_key"
        PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
        DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
        USE_TZ = False
    """))
    return "safemigrate_compat_settings"


SUMMARY = re.compile(r"^Ran (\d+) tests? in ", re.M)
FAILED_LINE = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([\w.]+)\)", re.M)
COUNTS = re.compile(r"(failures|errors|skipped|expected failures|unexpected successes)=(\d+)")


def run_django_suites(source, runtests, settings, settings_dir, suites, url, log):
    env = dict(os.environ, DATABASE_URL=url,
               PYTHONPATH=os.pathsep.join([str(settings_dir), str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-u", str(runtests), f"--settings={settings}", "--parallel=1", "--noinput",
               "-v", "2", *suites]
    print("$", " ".join(command), flush=True)
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=source / "tests", env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)
    outcome = summarise(Path(log).read_text())
    outcome.update(returncode=result.returncode, log=log)
    return outcome


def summarise(text):
    """Tests run, failed, errored and skipped, and the failing tests' ids, from runtests output."""
    ran = SUMMARY.search(text)
    tail = text[ran.end():] if ran else ""
    counts = {key: int(value) for key, value in COUNTS.findall(tail)}
    return {
        "ran": int(ran.group(1)) if ran else 0,
        "failures": counts.get("failures", 0),
        "errors": counts.get("errors", 0),
        "skipped": counts.get("skipped", 0),
        "failed_tests": sorted({match.group(3) for match in FAILED_LINE.finditer(text)}),
    }


def only_with_safemigrate(ours, plain):
    """Failing tests that pass with plain Django: the ones safemigrate is answerable for."""
    return sorted(set(ours["failed_tests"]) - set(plain["failed_tests"]))


def report(title, outcome):
    print(f"\n== {title}: ran {outcome['ran']}, failures {outcome['failures']}, errors {outcome['errors']}, "
          f"skipped {outcome['skipped']} (exit {outcome['returncode']}; log: {outcome['log']})")
    for name in outcome["failed_tests"]:
        print(f"   {name}")


def run_pgtrigger_suite(checkout, url, settings_dir, log):
    """django-pgtrigger's own tests, with safemigrate added to its test settings.

    Its test settings (``test_settings.py`` at the checkout's root) are
    imported and extended rather than edited: ``safemigrate`` joins
    ``INSTALLED_APPS`` and every PostgreSQL alias points at our server (names,
    engines and per-alias options such as ``search_path`` stay pgtrigger's).
    Its test dependencies (``pip install dj-database-url django-postgres-extra
    pytest-mock pytest-order django-dynamic-fixture django-pgbulk
    psycopg2-binary``) must be importable, e.g. through ``PYTHONPATH``.
    """
    checkout = Path(checkout).resolve()
    if not (checkout / "pgtrigger" / "tests").is_dir():
        raise SystemExit(f"{checkout} does not look like a django-pgtrigger checkout (no pgtrigger/tests).")
    sys.path.insert(0, str(REPO))
    from testproject.pgserver import database_settings

    ours = {key: value for key, value in database_settings(url).items() if key in ("HOST", "PORT", "USER", "PASSWORD")}
    (settings_dir / "safemigrate_pgtrigger_settings.py").write_text(textwrap.dedent(f"""
        from test_settings import *  # noqa: F401,F403  (django-pgtrigger's test settings)

        INSTALLED_APPS = [*INSTALLED_APPS, "safemigrate"]
        for _config in DATABASES.values():
            if "postgres" in _config["ENGINE"] or "psqlextra" in _config["ENGINE"]:
                _config.update({ours!r})
    """))
    env = dict(os.environ, DATABASE_URL=url, DJANGO_SETTINGS_MODULE="safemigrate_pgtrigger_settings",
               PYTHONPATH=os.pathsep.join([str(settings_dir), str(checkout), str(REPO),
                                           os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ds=safemigrate_pgtrigger_settings",
               "-q", "pgtrigger/tests"]
    print("$", " ".join(command), flush=True)
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=checkout, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    text = Path(log).read_text()
    summary = re.findall(r"^=*\s*(.*(?:passed|failed|error).*?)\s*=*$", text, re.M)
    print(f"\n== django-pgtrigger's suite with safemigrate: {summary[-1] if summary else 'no summary'} "
          f"(exit {result.returncode}; log: {log})")
    for line in re.findall(r"^(?:FAILED|ERROR) .*$", text, re.M):
        print(f"   {line}")
    return result.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where Django's sdist is downloaded and extracted (default {DEFAULT_CACHE})")
    parser.add_argument("--suites", nargs="+", default=SUITES, help="Django test labels to run")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the suites without safemigrate, to tell its failures from the environment's")
    parser.add_argument("--pgtrigger-src", metavar="PATH",
                        help="a checkout of django-pgtrigger: run its test suite with safemigrate installed")
    parser.add_argument("--no-django", action="store_true", help="skip Django's suites")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from testproject.pgserver import database_url

    url = database_url()  # our private server, stopped when this script exits
    settings_dir = Path(tempfile.mkdtemp(prefix="safemigrate-compat-"))
    status = 0
    if not args.no_django:
        source = django_source(args.cache_dir)
        settings = settings_module(settings_dir, url)
        ours = run_django_suites(source, patched_runtests(source, True), settings, settings_dir, args.suites,
                                 url, settings_dir / "django-with-safemigrate.log")
        report("Django's suites with safemigrate", ours)
        if args.baseline:
            plain = run_django_suites(source, patched_runtests(source, False), settings, settings_dir,
                                      args.suites, url, settings_dir / "django-baseline.log")
            report("Django's suites, plain Django (baseline)", plain)
            only_ours = only_with_safemigrate(ours, plain)
            print(f"\n== failing only with safemigrate: {len(only_ours)}")
            for name in only_ours:
                print(f"   {name}")
            # The baseline tells safemigrate's failures from the environment's.
            status = bool(only_ours)
        else:
            status = ours["returncode"] != 0
    if args.pgtrigger_src:
        status = run_pgtrigger_suite(args.pgtrigger_src, url, settings_dir,
                                     settings_dir / "pgtrigger-with-safemigrate.log") or status
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
