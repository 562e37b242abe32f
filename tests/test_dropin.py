"""safemigrate's commands behave as Django's wherever ``--safe`` and stages are not involved.

safemigrate replaces ``makemigrations`` and ``migrate`` in every project that
installs it, so anything Django's commands (and the apps extending them, such
as django-pgtrigger) do must keep working unchanged.
"""

import contextlib
import io
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.commands import makemigrations as django_makemigrations
from django.core.management.commands import migrate as django_migrate
from django.db import connection
from django.db.migrations.autodetector import MigrationAutodetector
from pgtrigger.migrations import MigrationAutodetectorMixin as PgtriggerAutodetectorMixin

REPO = Path(__file__).resolve().parent.parent

V1 = """
import pgtrigger
from django.db import models

class Item(models.Model):
    name = models.CharField(max_length=50)
    owner = models.IntegerField(null=True)
"""

PROTECTED = """
class Ledger(models.Model):
    amount = models.IntegerField()

    class Meta:
        triggers = [pgtrigger.Protect(name="protect_deletes", operation=pgtrigger.Delete)]
"""


def _write_app(root, label, models_source):
    app = root / label
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(textwrap.dedent(models_source))
    return app


def _run_django(tmp_path, settings_module, *args):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=settings_module,
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "django", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)


@contextlib.contextmanager
def scratch_databases(count):
    """``count`` empty databases on the test server, dropped afterwards."""
    import psycopg

    names = [f"dropin_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    admin = psycopg.connect(**_libpq(connection.settings_dict), autocommit=True)
    try:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _libpq(settings):
    params = {"dbname": settings["NAME"], "host": settings["HOST"], "user": settings["USER"]}
    if settings["PORT"]:
        params["port"] = settings["PORT"]
    if settings["PASSWORD"]:
        params["password"] = settings["PASSWORD"]
    return params


@pytest.fixture
def project(tmp_path):
    """A throw-away app ``dropapp`` in a project with pgtrigger and safemigrate installed.

    It runs in subprocesses against a database of its own, so ``migrate`` runs
    for real without touching the test database.
    """
    app = _write_app(tmp_path, "dropapp", V1)
    with scratch_databases(1) as (name,):
        (tmp_path / "dropin_settings.py").write_text(textwrap.dedent(f"""
            from testproject.settings import *  # noqa
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "safemigrate",
                              "dropapp"]
            DATABASES["default"]["NAME"] = {name!r}
        """))
        yield _runner(tmp_path, app)


def _runner(tmp_path, app):
    def run(*args, models=None):
        if models is not None:
            (app / "models.py").write_text(V1 + textwrap.dedent(models))
        return _run_django(tmp_path, "dropin_settings", *args)

    run.migrations = app / "migrations"
    return run


def migration_files(directory):
    return sorted(p.name for p in directory.glob("0*.py"))


# -- 1. django-pgtrigger's autodetector is kept ------------------------------------------


@pytest.mark.parametrize("safe", [[], ["--safe"]], ids=["plain", "safe"])
def test_makemigrations_writes_a_model_with_meta_triggers(project, safe):
    result = project("makemigrations", "dropapp", "--noinput", *safe, models=PROTECTED)
    assert result.returncode == 0, result.stderr
    text = (project.migrations / migration_files(project.migrations)[0]).read_text()
    assert "pgtrigger.migrations.AddTrigger(" in text and "protect_deletes" in text
    # The trigger is an operation, not a leftover Meta option Django cannot serialize.
    assert "'triggers'" not in text and '"triggers"' not in text


@pytest.mark.parametrize("safe", [[], ["--safe"]], ids=["plain", "safe"])
def test_a_trigger_added_to_an_existing_model_is_detected(project, safe):
    assert project("makemigrations", "dropapp", "--noinput", *safe, models=PROTECTED.replace(
        "        triggers = [", "        pass  # triggers = [")).returncode == 0
    # The model now gains the trigger:
    (project.migrations.parent / "models.py").write_text(V1 + textwrap.dedent(PROTECTED))
    check = project("makemigrations", "dropapp", "--check", "--dry-run", *safe)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "No changes detected" not in check.stdout
    result = project("makemigrations", "dropapp", "--noinput", *safe)
    assert result.returncode == 0, result.stderr
    written = migration_files(project.migrations)
    assert len(written) == 2
    assert "pgtrigger.migrations.AddTrigger(" in (project.migrations / written[1]).read_text()
    assert project("makemigrations", "dropapp", "--check", "--dry-run", *safe).returncode == 0


def test_migrate_notices_an_unmigrated_trigger_like_django_does(project):
    """Django's migrate uses the command's autodetector for "changes not yet reflected"."""
    without_trigger = PROTECTED.replace("        triggers = [", "        pass  # triggers = [")
    assert project("makemigrations", "dropapp", "--noinput", models=without_trigger).returncode == 0
    assert project("migrate", "dropapp", "--noinput").returncode == 0
    (project.migrations.parent / "models.py").write_text(V1 + textwrap.dedent(PROTECTED))
    result = project("migrate", "dropapp", "--noinput")
    assert result.returncode == 0, result.stderr
    assert "No migrations to apply" in result.stdout
    assert "have changes that are not yet reflected in a migration" in result.stdout


class _MarkingMixin:
    """Stands for any app's autodetector extension installed on the command class."""

    calls = []

    def _detect_changes(self, *args, **kwargs):
        type(self).calls.append(type(self).__name__)
        return super()._detect_changes(*args, **kwargs)


@pytest.mark.parametrize("safe", [False, True], ids=["plain", "safe"])
def test_makemigrations_composes_with_any_autodetector_on_the_command_class(db, monkeypatch, safe):
    installed = django_makemigrations.Command.autodetector
    assert issubclass(installed, PgtriggerAutodetectorMixin), "pgtrigger's ready() patch is missing"
    extended = type("ExtendedAutodetector", (_MarkingMixin, installed), {})
    monkeypatch.setattr(django_makemigrations.Command, "autodetector", extended)
    _MarkingMixin.calls.clear()
    call_command("makemigrations", "shop", dry_run=True, safe=safe, verbosity=0, stdout=io.StringIO())
    assert _MarkingMixin.calls, "the autodetector installed on Django's command was bypassed"
    # ... and pgtrigger's part still runs under it.
    from safemigrate.management.commands.makemigrations import Command

    command = Command(stdout=io.StringIO(), stderr=io.StringIO())
    call_command(command, "shop", dry_run=True, safe=safe, verbosity=0)
    used = command.autodetector
    assert issubclass(used, extended) and issubclass(used, PgtriggerAutodetectorMixin)
    if safe:
        from safemigrate.autodetector import SafeMigrationAutodetector

        assert issubclass(used, SafeMigrationAutodetector)


def test_migrate_keeps_the_installed_autodetector():
    from safemigrate.management.commands.migrate import Command as Migrate
    from safemigrate.management.commands.migrate_contract import Command as MigrateContract

    for command in (Migrate, MigrateContract):
        assert command.autodetector is django_migrate.Command.autodetector
        assert issubclass(command.autodetector, PgtriggerAutodetectorMixin)
    assert issubclass(django_migrate.Command.autodetector, MigrationAutodetector)
