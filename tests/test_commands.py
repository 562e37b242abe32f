"""``migrate`` holds contract migrations back; ``migrate_contract`` applies them."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from safemigrate.exceptions import StageOrderError
from tests.utils import execute, forget_migrations, run_command, temporary_migration_modules, unique_table

HEADER = "from django.db import migrations, models\nimport safemigrate.operations\n"


def chain(invoice_table, entry_table, dependents_stage="contract"):
    """billing: 0001 expand -> 0002 contract -> 0003; ledger: 0001 (-> billing 0001), 0002 (-> billing 0002).

    The migrations after the contract say ``stage = dependents_stage``: an
    expand migration behind a contract makes ``migrate`` refuse (see
    tests/test_releases.py), so the holding tests mark them contract.
    """
    marker = f'    stage = "{dependents_stage}"\n'
    billing = {
        "0001_initial.py": HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel("Invoice", [
            ("id", models.BigAutoField(primary_key=True)),
            ("total", models.IntegerField()),
            ("legacy", models.TextField(null=True)),
        ], options={{"db_table": "{invoice_table}"}}),
    ]
""",
        "0002_contract_drop_legacy.py": HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [
        safemigrate.operations.RemoveFieldSafely("invoice", "legacy"),
        safemigrate.operations.DropColumn("invoice", "legacy", field=models.TextField(null=True)),
    ]
""",
        "0003_after.py": HEADER + """
class Migration(migrations.Migration):
""" + marker + """    dependencies = [("billing", "0002_contract_drop_legacy")]
    operations = [migrations.AddField("invoice", "note", models.TextField(null=True))]
""",
    }
    ledger = {
        "0001_initial.py": HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.CreateModel("Entry", [
            ("id", models.BigAutoField(primary_key=True)),
            ("invoice", models.ForeignKey("billing.Invoice", models.CASCADE)),
        ], options={{"db_table": "{entry_table}"}}),
    ]
""",
        "0002_needs_contract.py": HEADER + """
class Migration(migrations.Migration):
""" + marker + """    dependencies = [("ledger", "0001_initial"), ("billing", "0002_contract_drop_legacy")]
    operations = [migrations.AddField("entry", "memo", models.TextField(null=True))]
""",
    }
    return {"billing": billing, "ledger": ledger}


def applied(app):
    return {name for (name,) in execute("SELECT name FROM django_migrations WHERE app = %s", [app])}


def columns(table):
    return {name for (name,) in execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table])}


@pytest.fixture
def tables(transactional_db):
    names = unique_table("inv"), unique_table("ent")
    yield names
    connections.close_all()
    for name in reversed(names):
        execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    forget_migrations("billing", "ledger")


def test_migrate_holds_back_contract_and_dependents_then_contract_applies_them(tmp_path, tables):
    invoice, entry = tables
    with temporary_migration_modules(tmp_path, chain(invoice, entry)):
        out, _ = run_command("migrate", "--noinput")
        assert applied("billing") == {"0001_initial"} and applied("ledger") == {"0001_initial"}
        assert "Held back 3 contract migration(s)" in out
        assert "billing.0002_contract_drop_legacy" in out and "ledger.0002_needs_contract" in out
        assert "python manage.py migrate_contract" in out
        assert "legacy" in columns(invoice)
        # Running migrate again does nothing new and still reports the held-back work.
        out, _ = run_command("migrate", "--noinput")
        assert "No migrations to apply" in out and "Held back 3" in out
        with pytest.raises(SystemExit) as exit_info:
            run_command("migrate_contract", "--check")
        assert exit_info.value.code == 1
        out, _ = run_command("migrate_contract", "--noinput")
        assert applied("billing") == {"0001_initial", "0002_contract_drop_legacy", "0003_after"}
        assert applied("ledger") == {"0001_initial", "0002_needs_contract"}
        assert "legacy" not in columns(invoice) and "note" in columns(invoice) and "memo" in columns(entry)
        assert "Drop column legacy" in out
        # Nothing pending: returns like Django's migrate --check (exit status 0).
        out, _ = run_command("migrate_contract", "--check")
        assert "No contract migrations pending" in out
        # Backwards to before the contract migration: the column comes back, empty.
        run_command("migrate", "ledger", "0001", "--noinput")
        run_command("migrate", "billing", "0001", "--noinput")
        assert applied("billing") == {"0001_initial"}
        assert "legacy" in columns(invoice) and "note" not in columns(invoice)


def test_migrate_contract_refuses_before_migrate(tmp_path, tables):
    with temporary_migration_modules(tmp_path, chain(*tables)):
        with pytest.raises(StageOrderError, match="Run `python manage.py migrate` first"):
            run_command("migrate_contract", "--noinput")
    assert applied("billing") == set()


def test_plan_annotates_stage_and_lock_and_contract_plan_shows_sql(tmp_path, tables):
    with temporary_migration_modules(tmp_path, chain(*tables)):
        out, _ = run_command("migrate", "--plan", "--annotate")
        assert "[expand; lock:" in out and "Held back 3" in out
        assert applied("billing") == set()
        run_command("migrate", "--noinput")
        text, _ = run_command("migrate_contract", "--plan", "--annotate")
        assert "billing.0002_contract_drop_legacy  [contract]" in text
        assert "[contract; lock: ACCESS EXCLUSIVE" in text
        assert "TO \"_archived_" in text and "DROP COLUMN" not in text and "lock_timeout" in text
        assert applied("billing") == {"0001_initial"}


def test_fake_marks_only_the_expand_stage(tmp_path, tables):
    invoice, _ = tables
    with temporary_migration_modules(tmp_path, chain(*tables)):
        run_command("migrate", "--fake", "--noinput")
    assert applied("billing") == {"0001_initial"} and applied("ledger") == {"0001_initial"}
    assert columns(invoice) == set()


def test_all_stages_applies_everything(tmp_path, tables):
    invoice, _ = tables
    with temporary_migration_modules(tmp_path, chain(*tables)):
        run_command("migrate", "--all-stages", "--noinput")
    assert len(applied("billing")) == 3 and "legacy" not in columns(invoice)


def test_squashed_migration_with_a_contract_step_is_held(tmp_path, tables):
    invoice, entry = tables
    apps = chain(invoice, entry)
    apps["billing"]["0001_squashed_0002.py"] = HEADER + f"""
class Migration(migrations.Migration):
    replaces = [("billing", "0001_initial"), ("billing", "0002_contract_drop_legacy")]
    atomic = False
    operations = [
        migrations.CreateModel("Invoice", [
            ("id", models.BigAutoField(primary_key=True)),
            ("total", models.IntegerField()),
            ("legacy", models.TextField(null=True)),
        ], options={{"db_table": "{invoice}"}}),
        safemigrate.operations.RemoveFieldSafely("invoice", "legacy"),
        safemigrate.operations.DropColumn("invoice", "legacy"),
    ]
"""
    apps["billing"]["0003_after.py"] = apps["billing"]["0003_after.py"].replace(
        '("billing", "0002_contract_drop_legacy")', '("billing", "0001_squashed_0002")')
    apps["ledger"]["0001_initial.py"] = apps["ledger"]["0001_initial.py"].replace(
        '("billing", "0001_initial")', '("billing", "0001_squashed_0002")')
    apps["ledger"]["0002_needs_contract.py"] = apps["ledger"]["0002_needs_contract.py"].replace(
        '("billing", "0002_contract_drop_legacy")', '("billing", "0001_squashed_0002")')
    with temporary_migration_modules(tmp_path, apps):
        # ledger.0001 (expand) now waits behind the contract-stage squash: migrate refuses.
        with pytest.raises(CommandError, match="ledger.0001_initial \\(expand\\) waits for billing.0001_squashed_0002"):
            run_command("migrate", "--noinput")
        assert applied("billing") == set()
        run_command("migrate_contract", "--noinput")
    assert "0001_squashed_0002" in applied("billing") and "legacy" not in columns(invoice)


def test_concurrent_runs_are_serialized_and_the_second_finds_nothing_to_do(tmp_path, tables):
    outputs, errors = [], []
    with temporary_migration_modules(tmp_path, chain(*tables)):
        def run():
            try:
                outputs.append(run_command("migrate", "--noinput"))
            except Exception as exc:  # pragma: no cover - reported by the assert
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    applied_lines = [out for out, _ in outputs if "Applying billing.0001_initial" in out]
    assert len(applied_lines) == 1
    assert sum("No migrations to apply" in out for out, _ in outputs) == 1


def test_test_database_creation_applies_contract_too(tmp_path, tables):
    """Django's test runner, in a subprocess, builds its test DB with every stage."""
    invoice, entry = tables
    package = tmp_path / "probe_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for filename, source in chain(invoice, entry)["billing"].items():
        (package / filename).write_text(source)
    (tmp_path / "probe_settings.py").write_text(textwrap.dedent("""
        from testproject.settings import *  # noqa
        MIGRATION_MODULES = {"billing": "probe_migrations", "ledger": None}
    """))
    (tmp_path / "probe_tests.py").write_text(textwrap.dedent(f"""
        from django.db import connection
        from django.test import TestCase

        class Probe(TestCase):
            def test_contract_ran(self):
                with connection.cursor() as cursor:
                    cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                                   ["{invoice}"])
                    names = {{row[0] for row in cursor.fetchall()}}
                assert "note" in names and "legacy" not in names, names
    """))
    url = connection.settings_dict
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="probe_settings",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]),
               DATABASE_URL=f"postgresql://{url['USER']}@/sm_probe?host={url['HOST']}")
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "probe_tests", "--noinput", "-v", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stderr


def test_migrate_check_counts_only_the_expand_stage(tmp_path, tables):
    with temporary_migration_modules(tmp_path, chain(*tables)):
        with pytest.raises(SystemExit) as exit_info:
            run_command("migrate", "--check")
        assert exit_info.value.code == 1  # expand work pending
        run_command("migrate", "--noinput")
        # Only contract work is left: migrate has nothing to do, migrate_contract does.
        run_command("migrate", "--check")
        with pytest.raises(SystemExit) as exit_info:
            run_command("migrate_contract", "--check")
        assert exit_info.value.code == 1
