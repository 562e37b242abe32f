"""The real makemigrations command on a throw-away project (subprocesses)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

V1 = """
from django.db import models

class Item(models.Model):
    name = models.CharField(max_length=50)
    owner = models.IntegerField(null=True)
"""


@pytest.fixture
def project(tmp_path):
    app = tmp_path / "mmapp"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(V1)
    (tmp_path / "mm_settings.py").write_text(textwrap.dedent("""
        from testproject.settings import *  # noqa
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pgtrigger", "safemigrate", "mmapp"]
    """))

    def run(*args, models=None):
        if models:
            (app / "models.py").write_text(V1 + textwrap.dedent(models))
        # No bytecode cache: a models.py rewritten within the same second at the same
        # size would otherwise be read from a stale .pyc.
        env = dict(os.environ, DJANGO_SETTINGS_MODULE="mm_settings", PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
        return subprocess.run([sys.executable, "-m", "django", "makemigrations", "mmapp", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert run("--noinput").returncode == 0
    run.migrations = app / "migrations"
    return run


def files(directory):
    return sorted(p.name for p in directory.glob("0*.py"))


def test_without_safe_it_is_django_plus_warnings(project):
    result = project("--noinput", models="""
    class Coupon(models.Model):
        code = models.CharField(max_length=10, default="X")
    """)
    assert result.returncode == 0
    assert files(project.migrations) == ["0001_initial.py", "0002_coupon.py"]
    # A new model is safe: no warning.
    assert "[SAFE1" not in result.stderr


def test_without_safe_a_risky_change_is_warned_about(project):
    (project.migrations.parent / "models.py").write_text(V1.replace("owner = models.IntegerField(null=True)",
                                                                    "owner = models.IntegerField(default=0)"))
    result = project("--noinput")
    assert result.returncode == 0, result.stderr
    assert "[SAFE110]" in result.stderr and "makemigrations --safe" in result.stderr
    text = (project.migrations / files(project.migrations)[-1]).read_text()
    assert "migrations.AlterField(" in text and "safemigrate" not in text


def test_safe_dry_run_writes_nothing_and_check_reports_pending(project):
    changed = V1.replace("name = models.CharField(max_length=50)", "")
    (project.migrations.parent / "models.py").write_text(changed)
    result = project("--safe", "--dry-run", "--noinput")
    assert result.returncode == 0, result.stderr
    assert "0002_expand_remove_item_name" in result.stdout and "0003_contract_" in result.stdout
    assert files(project.migrations) == ["0001_initial.py"]
    assert project("--check", "--dry-run").returncode == 1
    assert project("--safe", "--noinput").returncode == 0
    written = files(project.migrations)
    assert written[1].startswith("0002_expand_") and written[2].startswith("0003_contract_")
    assert 'stage = "contract"' in (project.migrations / written[2]).read_text()
    assert project("--check", "--dry-run").returncode == 0


def test_a_change_without_a_safe_strategy_stops_with_manual_steps(project):
    (project.migrations.parent / "models.py").write_text(V1.replace(
        "owner = models.IntegerField(null=True)", "owner = models.ForeignKey('self', models.CASCADE, null=True)"))
    result = project("--safe", "--noinput")
    assert result.returncode != 0
    assert "cannot make without downtime" in result.stderr and "add a new field for the new relation" in result.stderr
    assert files(project.migrations) == ["0001_initial.py"]


def test_safe_with_update_is_refused_and_writes_nothing(project):
    """--update would append expand and contract steps to the latest migration and let
    Django's optimizer fold them into plain operations."""
    (project.migrations.parent / "models.py").write_text(V1.replace("name = models.CharField(max_length=50)", ""))
    before = {p.name: p.read_text() for p in project.migrations.glob("0*.py")}
    result = project("--safe", "--update", "--noinput")
    assert result.returncode != 0
    assert "--safe --update is refused" in result.stderr and "without --update" in result.stderr
    assert {p.name: p.read_text() for p in project.migrations.glob("0*.py")} == before
