"""safemigrate's commands behave as Django's wherever ``--safe`` and stages are not involved.

safemigrate replaces ``makemigrations`` and ``migrate`` in every project that
installs it, so anything Django's commands (and the apps extending them, such
as django-pgtrigger) do must keep working unchanged.
"""

import io
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
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


#: A throw-away app ``dropapp`` in a project with pgtrigger and safemigrate installed: commands run
#: in subprocesses against a database of its own, so ``migrate`` runs for real without touching the
#: test database.
pytestmark = pytest.mark.project(app="dropapp", models=V1)


# -- 1. django-pgtrigger's autodetector is kept ------------------------------------------


@pytest.mark.parametrize("safe", [[], ["--safe"]], ids=["plain", "safe"])
def test_makemigrations_writes_a_model_with_meta_triggers(project, safe):
    project.models(V1 + PROTECTED)
    result = project.run("makemigrations", "dropapp", "--noinput", *safe, check=False)
    assert result.returncode == 0, result.stderr
    text = project.source("0001")
    assert "pgtrigger.migrations.AddTrigger(" in text and "protect_deletes" in text
    # The trigger is an operation, not a leftover Meta option Django cannot serialize.
    assert "'triggers'" not in text and '"triggers"' not in text


@pytest.mark.parametrize("safe", [[], ["--safe"]], ids=["plain", "safe"])
def test_a_trigger_added_to_an_existing_model_is_detected(project, safe):
    project.models(V1 + PROTECTED.replace("        triggers = [", "        pass  # triggers = ["))
    assert project.run("makemigrations", "dropapp", "--noinput", *safe, check=False).returncode == 0
    # The model now gains the trigger:
    project.models(V1 + PROTECTED)
    check = project.run("makemigrations", "dropapp", "--check", "--dry-run", *safe, check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "No changes detected" not in check.stdout
    result = project.run("makemigrations", "dropapp", "--noinput", *safe, check=False)
    assert result.returncode == 0, result.stderr
    written = project.files()
    assert len(written) == 2
    assert "pgtrigger.migrations.AddTrigger(" in project.source(written[1])
    assert project.run("makemigrations", "dropapp", "--check", "--dry-run", *safe, check=False).returncode == 0


def test_migrate_notices_an_unmigrated_trigger_like_django_does(project):
    """Django's migrate uses the command's autodetector for "changes not yet reflected"."""
    without_trigger = PROTECTED.replace("        triggers = [", "        pass  # triggers = [")
    project.models(V1 + without_trigger)
    assert project.run("makemigrations", "dropapp", "--noinput", check=False).returncode == 0
    assert project.run("migrate", "dropapp", "--noinput", check=False).returncode == 0
    project.models(V1 + PROTECTED)
    result = project.run("migrate", "dropapp", "--noinput", check=False)
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
        from safemigrate.planning.autodetector import SafeMigrationAutodetector

        assert issubclass(used, SafeMigrationAutodetector)


def test_migrate_keeps_the_installed_autodetector():
    from safemigrate.management.commands.migrate import Command as Migrate
    from safemigrate.management.commands.migrate_contract import Command as MigrateContract

    for command in (Migrate, MigrateContract):
        assert command.autodetector is django_migrate.Command.autodetector
        assert issubclass(command.autodetector, PgtriggerAutodetectorMixin)
    assert issubclass(django_migrate.Command.autodetector, MigrationAutodetector)


# -- 2. migrate's output is Django's; annotations only on request -----------------------

HEADER = "from django.db import migrations, models\nimport safemigrate.operations\n"


def expand_only(table):
    """billing: three migrations with Django's operations only (nothing to hold back)."""
    return {"billing": {
        "0001_initial.py": HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel("Invoice", [
            ("id", models.BigAutoField(primary_key=True)),
            ("total", models.IntegerField()),
        ], options={{"db_table": "{table}"}}),
    ]
""",
        "0002_note.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.AddField("invoice", "note", models.TextField(null=True)),
        migrations.RunSQL("SELECT 1", reverse_sql="SELECT 2"),
    ]
""",
        "0003_index.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0002_note")]
    operations = [migrations.AddIndex("invoice", models.Index(fields=["total"], name="inv_total_idx"))]
""",
    }}


def with_contract(table):
    apps = expand_only(table)
    apps["billing"]["0004_contract_drop_note.py"] = HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0003_index")]
    operations = [
        safemigrate.operations.RemoveFieldSafely("invoice", "note"),
        safemigrate.operations.DropColumn("invoice", "note", field=models.TextField(null=True)),
    ]
"""
    return apps


@pytest.fixture
def billing_table(transactional_db):
    from tests.utils import execute, forget_migrations, unique_table

    name = unique_table("inv")
    yield name
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    forget_migrations("billing")


def run_both(*args, **options):
    """(safemigrate's output, Django's own command's output) for the same arguments."""
    outputs = []
    for command in ("migrate", django_migrate.Command()):
        out, err = io.StringIO(), io.StringIO()
        call_command(command, *args, stdout=out, stderr=err, **options)
        outputs.append(out.getvalue() + "\n--stderr--\n" + err.getvalue())
    return outputs


@pytest.mark.parametrize("verbosity", [1, 2])
def test_plan_output_is_byte_identical_to_djangos(tmp_path, billing_table, verbosity):
    from tests.utils import temporary_migration_modules

    with temporary_migration_modules(tmp_path, expand_only(billing_table)):
        ours, djangos = run_both("billing", plan=True, verbosity=verbosity)
        assert "Planned operations:" in ours and "Add field note to invoice" in ours
        assert ours == djangos


def test_migrate_output_is_byte_identical_to_djangos(tmp_path, billing_table):
    from tests.utils import run_command, temporary_migration_modules

    with temporary_migration_modules(tmp_path, expand_only(billing_table)):
        outputs = []
        for command in ("migrate", django_migrate.Command()):
            forwards, backwards = io.StringIO(), io.StringIO()
            call_command(command, "billing", "--noinput", stdout=forwards, verbosity=1)
            call_command(command, "billing", "zero", "--noinput", stdout=backwards, verbosity=1)
            outputs.append((forwards.getvalue(), backwards.getvalue()))
        assert "Applying billing.0003_index... OK" in outputs[0][0]
        assert "Unapplying billing.0001_initial... OK" in outputs[0][1]
        assert outputs[0] == outputs[1]
        # Nothing to apply: the same message, no extra lines.
        run_command("migrate", "billing", "--noinput")
        ours, djangos = run_both("billing", "--noinput")
        assert "No migrations to apply." in ours and ours == djangos


def test_plan_annotate_adds_stages_and_locks_and_held_back_lines_appear_only_when_held(tmp_path, billing_table):
    from tests.utils import run_command, temporary_migration_modules

    with temporary_migration_modules(tmp_path, with_contract(billing_table)):
        plain, _ = run_command("migrate", "billing", "--plan")
        assert "lock:" not in plain and "[expand" not in plain
        assert "Held back 1 contract migration(s)" in plain and "billing.0004_contract_drop_note" in plain
        annotated, _ = run_command("migrate", "billing", "--plan", "--annotate")
        assert "Add field note to invoice  [expand; lock:" in annotated
        # Django's own plan lines, each with the annotation appended, then one line per statement
        # with the lock it takes and how safemigrate runs it (issue 10).
        plan_part, statements = annotated.split("Statements, the lock each takes, and how it runs:\n")
        assert [line.split("  [")[0] for line in plan_part.splitlines()] == plain.splitlines()
        assert "ADD COLUMN" in statements and "; bounded]" in statements
    with pytest.raises(CommandError, match="--annotate only changes the output of --plan"):
        run_command("migrate", "--annotate")


# -- 3. commands return from call_command ------------------------------------------------


def test_migrate_contract_plan_and_check_return_like_djangos_commands(tmp_path, billing_table):
    from tests.utils import run_command, temporary_migration_modules

    with temporary_migration_modules(tmp_path, with_contract(billing_table)):
        run_command("migrate", "billing", "--noinput")
        # Contract work pending: --check exits 1, Django's convention for --check.
        with pytest.raises(SystemExit) as exit_info:
            run_command("migrate_contract", "--check")
        assert exit_info.value.code == 1
        out, _ = run_command("migrate_contract", "billing", "--plan")
        assert out.splitlines()[0] == "Planned operations:"
        assert "billing.0004_contract_drop_note" in out and "lock:" not in out
        out, _ = run_command("migrate_contract", "billing", "--plan", "--annotate")
        assert "billing.0004_contract_drop_note  [contract]" in out and "[contract; lock:" in out
        run_command("migrate_contract", "--noinput")
        # Nothing pending: both return normally.
        out, _ = run_command("migrate_contract", "--check")
        assert out == "No contract migrations pending.\n"
        out, _ = run_command("migrate_contract", "billing", "--plan")
        assert out == "Planned operations:\n  No planned migration operations.\n"
        assert call_command("migrate_contract", plan=True, stdout=io.StringIO()) is None
        assert call_command("migrate_contract", check_unapplied=True, stdout=io.StringIO()) is None


# -- 4. an alias the router keeps the app off is skipped quietly -------------------------

ROUTED_MIGRATION = """
from django.db import migrations, models
import safemigrate.operations


class Migration(migrations.Migration):
    initial = True
    atomic = False
    dependencies = []
    operations = [
        migrations.CreateModel("Item", [
            ("id", models.BigAutoField(primary_key=True)),
            ("name", models.CharField(max_length=50)),
        ]),
        safemigrate.operations.AddColumnNullable("item", "owner", models.IntegerField(null=True)),
        safemigrate.operations.Backfill("item", set={"owner": "1"}, reverse_set={}),
        safemigrate.operations.CreateIndexConcurrently("item", models.Index(fields=["owner"], name="item_owner_idx")),
        safemigrate.operations.SetNotNull("item", "owner", models.IntegerField()),
    ]
"""


def test_migrate_on_an_alias_the_router_excludes_does_nothing_quietly(make_project):
    project = make_project(app="dropapp", models=V1.replace("owner = models.IntegerField(null=True)",
                                                            "owner = models.IntegerField()"),
                           migrations={"0001_initial.py": ROUTED_MIGRATION}, aliases=["other"],
                           settings='DATABASE_ROUTERS = ["dropin_router.KeepDropappOffOther"]\n')
    (project.root / "dropin_router.py").write_text(textwrap.dedent("""
        class KeepDropappOffOther:
            def allow_migrate(self, db, app_label, **hints):
                if app_label == "dropapp":
                    return db == "default"
                return None
    """))
    result = project.run("migrate", "--database=other", "--noinput")
    assert "Applying dropapp.0001_initial... OK" in result.stdout
    assert result.stderr == ""
    project.run("migrate", "--noinput")

    def tables(name):
        return {row[0] for row in project.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                                                dbname=name)}

    assert "dropapp_item" not in tables(project.aliases["other"]) and "django_migrations" in tables(
        project.aliases["other"])
    assert "dropapp_item" in tables(project.dbname)


def test_the_router_is_asked_before_the_backend_is_checked(db, monkeypatch, settings):
    """A non-PostgreSQL alias the router excludes is no error (as with Django's operations)."""
    from django.test.utils import CaptureQueriesContext

    from safemigrate.exceptions import NotPostgreSQLError
    from safemigrate.operations import DropTable

    class DenyShop:
        def allow_migrate(self, db, app_label, **hints):
            return app_label != "shop"

    operation = DropTable("shop_never_created")
    editor = connection.schema_editor(atomic=False)
    monkeypatch.setattr(connection, "vendor", "sqlite")  # the same real connection, another vendor
    settings.DATABASE_ROUTERS = [DenyShop()]
    with CaptureQueriesContext(connection) as queries:
        assert operation.runs_here("shop", editor, None) is False
        operation.database_forwards("shop", editor, None, None)
    assert len(queries) == 0
    # Where the router lets it run, the backend check still refuses, with the way out.
    with pytest.raises(NotPostgreSQLError, match="route this app's migrations away"):
        operation.runs_here("billing", editor, None)


# -- 5. PGTRIGGER_SCHEMA is honoured ------------------------------------------------------


def test_dual_write_trigger_installs_where_the_role_cannot_create_in_public(db, settings):
    """pgtrigger's ignore function goes to ``PGTRIGGER_SCHEMA``, as pgtrigger puts its own.

    Everything runs in the test's transaction (roles included), so it all rolls back.
    """
    from safemigrate.pg import triggers
    from tests.utils import execute

    suffix = uuid.uuid4().hex[:8]
    schema, role = f"sm_pgt_{suffix}", f"sm_migrator_{suffix}"
    qn = connection.ops.quote_name
    execute(f"CREATE ROLE {qn(role)} NOLOGIN")
    execute(f"CREATE SCHEMA {qn(schema)} AUTHORIZATION {qn(role)}")
    execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # already so on PostgreSQL 15+
    execute(f"SET LOCAL ROLE {qn(role)}")
    execute(f"SET LOCAL search_path = {qn(schema)}, public")
    execute("CREATE TABLE customer (id bigint PRIMARY KEY, name text, full_name text)")
    settings.PGTRIGGER_SCHEMA = schema
    pgid, sql = triggers.upsert_sql(qn, "customer", "rename", "name", "full_name")
    execute(sql)
    assert execute(
        "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = '_pgtrigger_should_ignore' AND n.nspname = %s", [schema]) == [(schema,)]
    execute("INSERT INTO customer (id, name) VALUES (1, 'old code')")
    assert execute("SELECT full_name FROM customer WHERE id = 1") == [("old code",)]
    # pgtrigger's ignore() mechanism reaches the function in that schema.
    execute("SELECT set_config('pgtrigger.ignore', %s, true)", ["{" + pgid + "}"])
    execute("INSERT INTO customer (id, name) VALUES (2, 'ignored')")
    assert execute("SELECT full_name FROM customer WHERE id = 2") == [(None,)]


def test_the_default_schema_gives_pgtriggers_own_sql(settings):
    """Without the setting the install SQL is byte-identical to before (existing migrations)."""
    from pgtrigger.compiler import UpsertTriggerSql

    from safemigrate.pg import triggers

    qn = connection.ops.quote_name
    settings.PGTRIGGER_SCHEMA = "public"
    pgid, sql = triggers.upsert_sql(qn, "customer", "rename", "name", "full_name", version=1)
    body = triggers.BODIES[1]["rename"].format(old=qn("name"), new=qn("full_name"), new_type=None)
    default = UpsertTriggerSql(pgid=pgid, func=body, table="customer", when="BEFORE", operation="INSERT OR UPDATE")
    assert sql == str(default)
    settings.PGTRIGGER_SCHEMA = "tenant_tools"
    assert '"tenant_tools"._pgtrigger_should_ignore(' in triggers.upsert_sql(qn, "customer", "rename", "name",
                                                                             "full_name")[1]


# -- the compat runner (tests/compat/run_compat.py, run on its own) -----------------------


def _compat_runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_compat", REPO / "tests" / "compat" / "run_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compat_runner_installs_safemigrate_in_a_copy_of_djangos_runtests(tmp_path):
    """The copy installs pgtrigger and safemigrate and keeps their commands in charge; the original is untouched."""
    run_compat = _compat_runner()
    (tmp_path / "tests").mkdir()
    original = textwrap.dedent('''\
        ALWAYS_INSTALLED_APPS = [
            "django.contrib.contenttypes",
            "django.contrib.staticfiles",
        ]
        import django.core.management
        print(ALWAYS_INSTALLED_APPS[-2:], django.core.management.get_commands()["migrate"])
    ''')
    (tmp_path / "tests" / "runtests.py").write_text(original)
    patched = run_compat.patched_runtests(tmp_path, with_safemigrate=True)
    baseline = run_compat.patched_runtests(tmp_path, with_safemigrate=False)
    assert (tmp_path / "tests" / "runtests.py").read_text() == original
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="testproject.settings", PYTHONPATH=str(REPO))
    setup = ["-c", "import django, runpy, sys; django.setup(); runpy.run_path(sys.argv[1])"]
    ours = subprocess.run([sys.executable, *setup, str(patched)], env=env, capture_output=True, text=True)
    assert ours.stdout.strip() == "['pgtrigger', 'safemigrate'] safemigrate", ours.stderr
    plain = subprocess.run([sys.executable, *setup, str(baseline)], env=env, capture_output=True, text=True)
    assert plain.stdout.startswith("['django.contrib.contenttypes', 'django.contrib.staticfiles']"), plain.stderr


def test_compat_runner_reports_only_the_failures_safemigrate_causes():
    run_compat = _compat_runner()
    ours = run_compat.summarise(textwrap.dedent("""\
        test_a (migrations.test_x.T.test_a) ... ok
        ERROR: test_collation (migrations.test_operations.OperationTests.test_collation)
        FAIL: test_migrate_plan (migrations.test_commands.MigrateTests.test_migrate_plan)
        Ran 790 tests in 12.5s

        FAILED (failures=1, errors=1, skipped=6)
    """))
    assert (ours["ran"], ours["failures"], ours["errors"], ours["skipped"]) == (790, 1, 1, 6)
    plain = run_compat.summarise(
        "ERROR: test_collation (migrations.test_operations.OperationTests.test_collation)\n"
        "Ran 790 tests in 11.0s\n\nFAILED (errors=1, skipped=6)\n")
    assert run_compat.only_with_safemigrate(ours, plain) == [
        "migrations.test_commands.MigrateTests.test_migrate_plan"]
