"""The linter: risky operations, why, and the safe alternative."""

import json

import pytest
from django.db import migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.test.utils import override_settings

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


# -- the fixture set: precision and recall ------------------------------------

FIXTURES = {"billing": "tests.lint_fixtures.billing", "ledger": "tests.lint_fixtures.ledger"}


def lint_json(*args, **settings):
    """Run lint_migrations --format json over the fixture apps; returns the parsed document."""
    with override_settings(MIGRATION_MODULES=FIXTURES, **settings):
        out, _ = run_command("lint_migrations", "billing", "ledger", "--format", "json", *args)
    return json.loads(out)


def test_fixture_set_precision_and_recall(capsys):
    from tests.lint_fixtures.expected import EXPECTED, EXPECTED_NOTES, MISS, WARNINGS

    document = lint_json()
    reported = {}
    notes = {}
    for item in document["findings"]:
        key = (item["app"], item["migration"], item["operation_index"])
        target = notes if item["severity"] == "note" else reported
        target.setdefault(key, set()).add(item["rule"])
        assert (item["severity"] == "warning") == (item["rule"] in WARNINGS), item
    unknown = set(reported) - set(EXPECTED)
    assert not unknown, f"findings for operations without an expected verdict: {unknown}"
    with override_settings(MIGRATION_MODULES=FIXTURES):
        from django.db.migrations.loader import MigrationLoader

        loader = MigrationLoader(None, ignore_no_migrations=True)
        operations = {(app, name, i) for (app, name), m in loader.disk_migrations.items() if app in FIXTURES
                      for i in range(len(m.operations))}
    assert operations == set(EXPECTED), "every fixture operation needs an expected verdict"

    expected_pairs = {(key, rule) for key, (rules, _) in EXPECTED.items() for rule in rules}
    reported_pairs = {(key, rule) for key, rules in reported.items() for rule in rules}
    true_positives = expected_pairs & reported_pairs
    precision = len(true_positives) / len(reported_pairs)
    recall = len(true_positives) / len(expected_pairs)
    with capsys.disabled():
        print(f"\nlint fixtures: {len(operations)} operations, {len(expected_pairs)} expected findings, "
              f"{len(reported_pairs)} reported; precision {precision:.2f}, recall {recall:.2f}")
    misses = {key for key, (rules, kind) in EXPECTED.items() if kind == MISS}
    assert all(EXPECTED[key][0] <= reported.get(key, set()) for key in misses), "a listed miss is still missed"
    wrong = {key: rules for key, rules in reported.items() if rules - EXPECTED[key][0]}
    assert not wrong, f"false positives: {wrong}"
    assert reported_pairs == expected_pairs
    assert notes == EXPECTED_NOTES
    assert precision == 1.0 and recall == 1.0
