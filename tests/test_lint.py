"""The linter: risky operations, why, and the safe alternative."""

import pytest
from django.db import migrations, models
from django.db.migrations.state import ModelState, ProjectState

from safemigrate import lint
from safemigrate import operations as safe
from tests.utils import run_command, temporary_migration_modules


def project():
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True)),
                                                ("n", models.IntegerField(null=True)),
                                                ("s", models.CharField(max_length=5))]))
    return state


@pytest.mark.parametrize("operation, code, fix", [
    (migrations.RemoveField("item", "s"), "SAFE101", "RemoveFieldSafely"),
    (migrations.DeleteModel("Item"), "SAFE102", "RemoveModelSafely"),
    (migrations.RenameField("item", "s", "t"), "SAFE103", "RenameViaCopy"),
    (migrations.RenameModel("Item", "Thing"), "SAFE104", "RenameModelWithView"),
    (migrations.AddField("item", "c", models.IntegerField(default=1)), "SAFE106", "AddColumnNullable"),
    (migrations.AlterField("item", "n", models.BigIntegerField(null=True)), "SAFE109", "ChangeTypeViaCopy"),
    (migrations.AlterField("item", "n", models.IntegerField()), "SAFE110", "SetNotNull"),
    (migrations.AddIndex("item", models.Index(fields=["n"], name="i_n")), "SAFE112", "CreateIndexConcurrently"),
    (migrations.AddConstraint("item", models.UniqueConstraint(fields=["n"], name="u_n")), "SAFE114", "AddUniqueConstraint"),
])
def test_risky_operations_are_classified_with_the_safe_alternative(operation, code, fix):
    finding = lint.classify(operation, project(), "shop")
    assert finding.code == code and fix in finding.fix
    assert lint.lock_for(operation, project(), "shop")


@pytest.mark.parametrize("operation", [
    migrations.AddField("item", "c", models.IntegerField(null=True)),
    migrations.CreateModel("Other", [("id", models.BigAutoField(primary_key=True))]),
    safe.CreateIndexConcurrently("item", models.Index(fields=["n"], name="i_n")),
    migrations.AlterField("item", "s", models.CharField(max_length=5, verbose_name="S")),
])
def test_safe_operations_pass(operation):
    assert lint.classify(operation, project(), "shop") is None


def test_lint_migrations_command_reads_migration_files(tmp_path):
    files = {
        "0001_initial.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True)),
                                                   ("n", models.IntegerField(null=True))])]
""",
        "0002_index.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AddIndex("thing", models.Index(fields=["n"], name="thing_n")),
                  migrations.AlterField("thing", "n", models.IntegerField())]
""",
    }
    with temporary_migration_modules(tmp_path, {"billing": files}):
        out, _ = run_command("lint_migrations", "billing")
        assert "billing.0002_index: [SAFE112]" in out and "[SAFE110]" in out and "2 risky" in out
        with pytest.raises(SystemExit):
            run_command("lint_migrations", "billing", "--fail-on-risky")
