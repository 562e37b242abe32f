"""The real makemigrations command on a throw-away project (subprocesses)."""

import textwrap

import pytest

V1 = """
from django.db import models

class Item(models.Model):
    name = models.CharField(max_length=50)
    owner = models.IntegerField(null=True)
"""

pytestmark = pytest.mark.project(app="mmapp", models=V1)


@pytest.fixture(autouse=True)
def initial(project):
    """Every test starts from the project's first migration."""
    makemigrations(project, "--noinput", check=True)


def makemigrations(project, *args, models=None, check=False):
    """``makemigrations mmapp ARGS`` in the project; ``models``: fields added to ``V1`` first."""
    if models:
        project.models(V1 + textwrap.dedent(models))
    return project.run("makemigrations", "mmapp", *args, check=check)


def test_without_safe_it_is_django_plus_warnings(project):
    result = makemigrations(project, "--noinput", models="""
    class Coupon(models.Model):
        code = models.CharField(max_length=10, default="X")
    """)
    assert result.returncode == 0
    assert project.files() == ["0001_initial", "0002_coupon"]
    # A new model is safe: no warning.
    assert "[SAFE1" not in result.stderr


def test_without_safe_a_risky_change_is_warned_about(project):
    project.models(V1.replace("owner = models.IntegerField(null=True)", "owner = models.IntegerField(default=0)"))
    result = makemigrations(project, "--noinput")
    assert result.returncode == 0, result.stderr
    assert "[SAFE110]" in result.stderr and "makemigrations --safe" in result.stderr
    text = project.source(project.files()[-1])
    assert "migrations.AlterField(" in text and "safemigrate" not in text


def test_safe_dry_run_writes_nothing_and_check_reports_pending(project):
    changed = V1.replace("name = models.CharField(max_length=50)", "")
    project.models(changed)
    result = makemigrations(project, "--safe", "--dry-run", "--noinput")
    assert result.returncode == 0, result.stderr
    assert "0002_expand_remove_item_name" in result.stdout and "0003_contract_" in result.stdout
    assert project.files() == ["0001_initial"]
    assert makemigrations(project, "--check", "--dry-run").returncode == 1
    assert makemigrations(project, "--safe", "--noinput").returncode == 0
    written = project.files()
    assert written[1].startswith("0002_expand_") and written[2].startswith("0003_contract_")
    assert 'stage = "contract"' in project.source(written[2])
    assert makemigrations(project, "--check", "--dry-run").returncode == 0


def test_a_change_without_a_safe_strategy_stops_with_manual_steps(project):
    project.models(V1.replace(
        "owner = models.IntegerField(null=True)", "owner = models.ForeignKey('self', models.CASCADE, null=True)"))
    result = makemigrations(project, "--safe", "--noinput")
    assert result.returncode != 0
    assert "cannot make without downtime" in result.stderr and "add a new field for the new relation" in result.stderr
    assert project.files() == ["0001_initial"]


def test_safe_with_update_is_refused_and_writes_nothing(project):
    """--update would append expand and contract steps to the latest migration and let
    Django's optimizer fold them into plain operations."""
    project.models(V1.replace("name = models.CharField(max_length=50)", ""))
    before = {p.name: p.read_text() for p in project.migrations.glob("0*.py")}
    result = makemigrations(project, "--safe", "--update", "--noinput")
    assert result.returncode != 0
    assert "--safe --update is refused" in result.stderr and "without --update" in result.stderr
    assert {p.name: p.read_text() for p in project.migrations.glob("0*.py")} == before
