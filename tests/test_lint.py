"""The linter: risky operations, why, and the safe alternative."""

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.db import migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.test.utils import override_settings

from safemigrate.planning import rules
from safemigrate.planning.findings import RULES
from safemigrate import operations as safe
from tests.utils import run_command, temporary_migration_modules


def shop_state():
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
    (migrations.AddConstraint("item", models.UniqueConstraint(fields=["n"], name="u_n")), "SAFE114",
     "AddUniqueConstraint"),
])
def test_risky_operations_are_classified_with_the_safe_alternative(operation, code, fix):
    finding = rules.classify(operation, shop_state(), "shop")
    assert finding.code == code and fix in finding.fix
    assert rules.lock_for(operation, shop_state(), "shop")


@pytest.mark.parametrize("operation", [
    migrations.AddField("item", "c", models.IntegerField(null=True)),
    migrations.CreateModel("Other", [("id", models.BigAutoField(primary_key=True))]),
    safe.CreateIndexConcurrently("item", models.Index(fields=["n"], name="i_n")),
    migrations.AlterField("item", "s", models.CharField(max_length=5, verbose_name="S")),
])
def test_safe_operations_pass(operation):
    assert rules.classify(operation, shop_state(), "shop") is None


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


def test_no_sql_and_fk_recreation_verdicts_match_djangos_schema_editor(db):
    """The verdicts "runs no SQL" and "re-creates the FK constraint" are checked against real Django SQL."""
    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    from tests.utils import apply_operations

    with override_settings(MIGRATION_MODULES=FIXTURES):
        loader = MigrationLoader(None, ignore_no_migrations=True)
        state, _ = apply_operations(loader.get_migration("billing", "0001_initial").operations, app_label="billing",
                                    atomic=True)
        apply_operations(loader.get_migration("ledger", "0001_initial").operations, state, app_label="ledger",
                         atomic=True)

        def collected(app, name, index):
            before = loader.project_state((app, name), at_end=False)
            operations = loader.get_migration(app, name).operations
            for operation in operations[:index]:
                operation.state_forwards(app, before)
            after = before.clone()
            operations[index].state_forwards(app, after)
            with connection.schema_editor(collect_sql=True, atomic=False) as editor:
                operations[index].database_forwards(app, editor, before, after)
            return [sql for sql in editor.collected_sql if not sql.startswith("--")]

        for case in [("billing", "0004_created_by", 1), ("billing", "0006_harmless", 4),
                     ("billing", "0006_harmless", 5), ("billing", "0006_harmless", 6),
                     ("ledger", "0002_entry_customer", 0)]:
            assert collected(*case) == [], case
        for case in [("billing", "0004_created_by", 0), ("billing", "0004_created_by", 2)]:
            sql = " ".join(collected(*case))
            assert "DROP CONSTRAINT" in sql and "FOREIGN KEY" in sql, (case, sql)


# -- the rule functions makemigrations --safe should share --------------------


def relation_state():
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.BigAutoField(primary_key=True))]))
    state.add_model(ModelState("shop", "Account", [("id", models.UUIDField(primary_key=True))]))
    state.add_model(ModelState("shop", "Legacy", [("id", models.AutoField(primary_key=True)),
                                                  ("code", models.CharField(max_length=8, unique=True))]))
    state.add_model(ModelState("shop", "Order", [
        ("id", models.BigAutoField(primary_key=True)),
        ("customer", models.ForeignKey("shop.customer", models.CASCADE)),
    ]))
    return state


@pytest.mark.parametrize("new_field, types, risky", [
    (models.ForeignKey("shop.account", models.CASCADE), ("bigint", "uuid"), True),
    (models.ForeignKey("shop.legacy", models.CASCADE), ("bigint", "integer"), True),
    (models.ForeignKey("shop.legacy", models.CASCADE, to_field="code"), ("bigint", "varchar(8)"), True),
    (models.ForeignKey("shop.customer", models.PROTECT, related_name="orders"), ("bigint", "bigint"), False),
    (models.BigIntegerField(), ("bigint", "bigint"), False),
])
def test_column_types_resolve_relations_through_the_migration_state(new_field, types, risky):
    state = relation_state()
    old = state.models["shop", "order"].get_field("customer")
    assert rules.column_types(old, new_field, state, None, "shop", "order") == types
    assert rules.type_change_is_risky(old, new_field, state, None, "shop", "order") is risky


# -- raw SQL ------------------------------------------------------------------


def test_statements_are_split_outside_quotes_dollar_bodies_and_comments():
    from safemigrate.pg.classify import split_statements

    sql = """SELECT 'a;b'; -- c; d
    CREATE FUNCTION f() RETURNS int AS $x$ SELECT 1; $x$ LANGUAGE sql; /* e; */ SELECT "q;"; """
    assert split_statements(sql) == ["SELECT 'a;b'", "CREATE FUNCTION f() RETURNS int AS $x$ SELECT 1; $x$ "
                                     "LANGUAGE sql", 'SELECT "q;"']


@pytest.mark.parametrize("sql, codes, table", [
    ('ALTER TABLE ONLY "public"."Shop_Item" ALTER COLUMN n SET DATA TYPE bigint', ["SAFE133"], "Shop_Item"),
    ("ALTER TABLE public.item ADD COLUMN token uuid DEFAULT gen_random_uuid()", ["SAFE133"], "item"),
    ("ALTER TABLE item ADD COLUMN a int NOT NULL DEFAULT 0, ALTER COLUMN b SET NOT NULL", ["SAFE134"], "item"),
    ("ALTER TABLE item ADD CONSTRAINT item_pk PRIMARY KEY USING INDEX item_pk_idx", [], None),
    ("ALTER TABLE item ADD CONSTRAINT u UNIQUE (code)", ["SAFE131"], "item"),
    ("ALTER TABLE item ADD FOREIGN KEY (o_id) REFERENCES o (id)", ["SAFE132"], "item"),
    ("ALTER TABLE item DROP CONSTRAINT u, RENAME CONSTRAINT a TO b", [], None),
    ("ALTER TABLE item RENAME TO things", ["SAFE136"], "item"),
    ("REINDEX TABLE item", ["SAFE131"], "item"),
    ("REINDEX INDEX CONCURRENTLY item_idx", [], None),
    ("TRUNCATE item", ["SAFE135"], "item"),
    ("VACUUM FULL item", ["SAFE133"], "item"),
    ("DELETE FROM item WHERE created < now() - interval '1 year'", [], None),
    ("UPDATE item SET note = 'no WHERE here'", ["SAFE138"], "item"),
    ("CREATE UNIQUE INDEX CONCURRENTLY u ON item (code)", [], None),
    ("CREATE INDEX ON item USING gin (tags)", ["SAFE131"], "item"),
    ("CLUSTER item USING item_pkey", ["SAFE133"], "item"),
    ("ALTER TABLE item SET LOGGED", ["SAFE133"], "item"),
    ("ALTER TABLE item ADD COLUMN total int GENERATED ALWAYS AS (a + b) STORED", ["SAFE133"], "item"),
    ("ALTER TABLE item ADD COLUMN code text UNIQUE", ["SAFE131"], "item"),
    ("ALTER TABLE item ALTER COLUMN n DROP NOT NULL, ALTER COLUMN n SET DEFAULT 0", [], None),
    ("LOCK item IN SHARE MODE", ["SAFE137"], "item"),
])
def test_sql_statement_classifier(sql, codes, table):
    from safemigrate.planning.lint_sql import classify_statement

    found = classify_statement(sql)
    assert [f.code for f in found] == codes
    assert all(f.table == table for f in found)


def test_run_sql_with_params_is_read():
    operation = migrations.RunSQL([("UPDATE item SET n = %s", [1]), "CREATE INDEX i ON item (n)"])
    assert [f.code for f in rules.findings(operation)] == ["SAFE138", "SAFE131"]


# -- ignores -----------------------------------------------------------------

IGNORE_FILES = {
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
    safemigrate_ignore = {"SAFE112": "thing has 12 rows, checked 2026-11-20"}
    operations = [migrations.AddIndex("thing", models.Index(fields=["n"], name="thing_n"))]
""",
    "0003_not_null.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0002_index")]
    operations = [migrations.AlterField("thing", "n", models.IntegerField(default=0)),
                  migrations.RemoveIndex("thing", "thing_n")]
""",
}


def lint_ignored(tmp_path, files=IGNORE_FILES, ignores=None, *args):
    with temporary_migration_modules(tmp_path, {"billing": files}), \
            override_settings(SAFEMIGRATE={"LINT_IGNORE": ignores or []}):
        out, err = run_command("lint_migrations", "billing", "--format", "json", *args)
    return {(f["migration"], f["rule"]): f["ignored"] for f in json.loads(out)["findings"]}, err


def test_an_ignore_in_the_migration_covers_that_migration_with_its_reason(tmp_path):
    found, _ = lint_ignored(tmp_path)
    assert found[("0002_index", "SAFE112")] == {"source": "migration",
                                                "reason": "thing has 12 rows, checked 2026-11-20"}
    assert found[("0003_not_null", "SAFE110")] is None and found[("0003_not_null", "SAFE113")] is None


@pytest.mark.parametrize("entry, ignored", [
    ({"app": "billing"}, {"SAFE110", "SAFE113"}),
    ({"app": "billing", "migration": "0003_not_null"}, {"SAFE110", "SAFE113"}),
    ({"app": "billing", "migration": "0002_index"}, set()),
    ({"rule": "SAFE113"}, {"SAFE113"}),
    ({"app": "billing", "rule": "SAFE110"}, {"SAFE110"}),
    ({"app": "ledger"}, set()),
])
def test_settings_ignores_match_per_app_migration_and_rule(tmp_path, entry, ignored):
    found, _ = lint_ignored(tmp_path, IGNORE_FILES, [dict(entry, reason="reviewed")])
    assert {rule for (migration, rule), why in found.items() if migration == "0003_not_null" and why} == ignored
    assert all(why == {"source": "settings", "reason": "reviewed"}
               for (migration, _), why in found.items() if migration == "0003_not_null" and why)


@pytest.mark.parametrize("ignores, message", [
    ([{"rule": "SAFE110"}], "needs a reason"),
    ([{"rule": "SAFE110", "reason": "  "}], "needs a reason"),
    ([{"rule": "SAFE999", "reason": "x"}], "unknown rule id"),
    ([{"reason": "x"}], "matches everything"),
    ([{"migration": "0003_not_null", "reason": "x"}], "needs 'app'"),
    ([{"app": "billing", "reson": "typo"}], "unknown keys"),
    ({"app": "billing"}, "must be a list"),
])
def test_malformed_settings_ignores_are_configuration_errors(tmp_path, ignores, message):
    with pytest.raises(CommandError, match=message) as error:
        lint_ignored(tmp_path, IGNORE_FILES, ignores)
    assert error.value.returncode == 2


def test_an_ignore_without_a_reason_in_a_migration_is_a_configuration_error(tmp_path):
    files = dict(IGNORE_FILES)
    files["0002_index.py"] = files["0002_index.py"].replace('"thing has 12 rows, checked 2026-11-20"', '""')
    with pytest.raises(CommandError, match="0002_index.*needs a reason") as error:
        lint_ignored(tmp_path, files)
    assert error.value.returncode == 2


def test_ignored_and_note_findings_do_not_fail_ci(tmp_path):
    files = {name: text for name, text in IGNORE_FILES.items() if name != "0003_not_null.py"}
    files["0003_data.py"] = """
from django.db import migrations
def fill(apps, schema_editor):
    pass
class Migration(migrations.Migration):
    dependencies = [("billing", "0002_index")]
    operations = [migrations.RunPython(fill)]
"""
    with temporary_migration_modules(tmp_path, {"billing": files}):
        out, _ = run_command("lint_migrations", "billing", "--fail-on-risky")
        assert "No risky operations found. (1 ignored; 1 note(s) hidden" in out
        out, _ = run_command("lint_migrations", "billing", "--fail-on-risky", verbosity=2)
        assert "[SAFE117] note:" in out and "[SAFE112]" not in out
    files["0002_index.py"] = files["0002_index.py"].replace("safemigrate_ignore", "not_an_ignore")
    with temporary_migration_modules(tmp_path / "again", {"billing": files}):
        with pytest.raises(SystemExit) as exit_:
            run_command("lint_migrations", "billing", "--fail-on-risky")
        assert exit_.value.code == 1


# -- output formats ------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "pages" / "linter.md"

#: The parts of SARIF 2.1.0 (OASIS standard, sarif-schema-2.1.0) that code-scanning
#: uploads rely on, written out from the specification.
SARIF_SCHEMA = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string", "format": "uri"},
        "version": {"const": "2.1.0"},
        "runs": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["tool"],
            "properties": {
                "tool": {"type": "object", "required": ["driver"], "properties": {"driver": {
                    "type": "object", "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "informationUri": {"type": "string", "format": "uri"},
                        "rules": {"type": "array", "uniqueItems": True, "items": {
                            "type": "object", "required": ["id"],
                            "properties": {
                                "id": {"type": "string"},
                                "shortDescription": {"$ref": "#/$defs/message"},
                                "defaultConfiguration": {"type": "object", "properties": {
                                    "level": {"$ref": "#/$defs/level"}}},
                            }}},
                    }}}},
                "results": {"type": "array", "items": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "ruleId": {"type": "string"},
                        "ruleIndex": {"type": "integer", "minimum": -1},
                        "level": {"$ref": "#/$defs/level"},
                        "message": {"$ref": "#/$defs/message"},
                        "locations": {"type": "array", "items": {"type": "object", "properties": {
                            "physicalLocation": {"type": "object", "properties": {
                                "artifactLocation": {"type": "object", "required": ["uri"],
                                                     "properties": {"uri": {"type": "string"}}},
                                "region": {"type": "object", "properties": {
                                    "startLine": {"type": "integer", "minimum": 1}}},
                            }},
                            "logicalLocations": {"type": "array", "items": {"type": "object"}},
                        }}},
                        "suppressions": {"type": "array", "items": {
                            "type": "object", "required": ["kind"],
                            "properties": {"kind": {"enum": ["inSource", "external"]},
                                           "justification": {"type": "string"}}}},
                        "properties": {"type": "object"},
                    }}},
            }}},
    },
    "$defs": {
        "level": {"enum": ["none", "note", "warning", "error"]},
        "message": {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}],
                    "properties": {"text": {"type": "string"}}},
    },
}

SUPPRESS = {"LINT_IGNORE": [{"app": "billing", "migration": "0007_cleanup", "rule": "SAFE101",
                             "reason": "note unused since release 41"}]}


def documented_json_schema():
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    return json.loads(next(block for block in blocks if '"$schema"' in block))


def test_json_output_follows_the_schema_in_the_docs():
    jsonschema = pytest.importorskip("jsonschema")
    schema = documented_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    document = lint_json(SAFEMIGRATE=SUPPRESS)
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    removed = next(f for f in document["findings"] if f["rule"] == "SAFE101")
    assert removed["ignored"] == {"source": "settings", "reason": "note unused since release 41"}
    assert removed["file"].endswith("0007_cleanup.py") and removed["operation_index"] == 0
    source = Path(removed["file"]).read_text().splitlines()
    assert "RemoveField" in source[removed["line"] - 1]
    from tests.lint_fixtures.expected import EXPECTED, EXPECTED_NOTES, WARNINGS

    expected = [rule for rules, _ in EXPECTED.values() for rule in rules]
    assert document["summary"] == {"errors": sum(r not in WARNINGS for r in expected) - 1,
                                   "warnings": sum(r in WARNINGS for r in expected),
                                   "notes": len(EXPECTED_NOTES), "ignored": 1}
    # A schema that accepts anything would prove nothing.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(document, findings=[dict(removed, severity="fatal")]), schema)


def test_sarif_output_is_valid_sarif_2_1_0():
    jsonschema = pytest.importorskip("jsonschema")
    with override_settings(MIGRATION_MODULES=FIXTURES, SAFEMIGRATE=SUPPRESS):
        out, _ = run_command("lint_migrations", "billing", "ledger", "--format", "sarif")
    document = json.loads(out)
    jsonschema.validate(document, SARIF_SCHEMA, cls=jsonschema.Draft202012Validator)
    run = document["runs"][0]
    sarif_rules = run["tool"]["driver"]["rules"]
    assert {rule["id"] for rule in sarif_rules} == set(RULES)
    assert all(sarif_rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in run["results"])
    assert {r["level"] for r in run["results"]} == {"error", "warning", "note"}
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert [(r["ruleId"], r["suppressions"]) for r in suppressed] == [
        ("SAFE101", [{"kind": "external", "justification": "note unused since release 41"}])]
    uri = suppressed[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "tests/lint_fixtures/billing/0007_cleanup.py" or uri.startswith("file://")


def test_every_rule_is_documented():
    text = DOCS.read_text()
    documented = set(re.findall(r"^\| `(SAFE\d+)` \|", text, re.M))
    assert documented == set(RULES)
    for rule in RULES.values():
        row = re.search(rf"^\| `{rule.id}` \|(.*)$", text, re.M).group(1)
        assert (rule.severity == "warning") == ("warning" in row), rule.id


# -- only the new migrations: --since and files ----------------------------------

SINCE_BASE = {
    "0001_initial.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Thing", [("id", models.BigAutoField(primary_key=True)),
                                                   ("n", models.IntegerField(null=True))])]
""",
    "0002_thing_index.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.AddIndex("thing", models.Index(fields=["n"], name="thing_n"))]
""",
}
SINCE_NEW = {
    "0003_gadget.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0002_thing_index")]
    operations = [migrations.CreateModel("Gadget", [("id", models.BigAutoField(primary_key=True)),
                                                    ("n", models.IntegerField(null=True))])]
""",
    "0004_gadget_index.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0003_gadget")]
    operations = [migrations.AddIndex("gadget", models.Index(fields=["n"], name="gadget_n")),
                  migrations.AlterField("gadget", "n", models.IntegerField())]
""",
    "0005_thing_not_null.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0004_gadget_index")]
    operations = [migrations.AlterField("thing", "n", models.IntegerField())]
""",
}


def git(repo, *args):
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture
def since_repo(tmp_path, monkeypatch):
    """A real git repository: 0001-0002 committed on the base, 0003-0005 added on a branch, 0002 edited."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    with temporary_migration_modules(repo, {"billing": SINCE_BASE}) as roots:
        package = roots["billing"]
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "base")
        git(repo, "checkout", "-q", "-b", "feature")
        for name, text in SINCE_NEW.items():
            (package / name).write_text(text)
        # A modified (not added) file is not part of --since, even with a risky operation in it.
        (package / "0002_thing_index.py").write_text(SINCE_BASE["0002_thing_index.py"].replace(
            'name="thing_n"))]',
            'name="thing_n")), migrations.AlterField("thing", "n", models.IntegerField(null=True, db_index=True))]'))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "feature")
        monkeypatch.chdir(repo)
        yield package


def rules_by_migration(*args):
    out, _ = run_command("lint_migrations", "--format", "json", *args)
    return sorted((f["migration"], f["rule"]) for f in json.loads(out)["findings"])


def test_since_lints_only_files_added_since_the_ref_and_treats_their_tables_as_new(since_repo):
    # 0004 alters gadget, created by 0003 (also new): no rows yet, nothing to report.
    assert rules_by_migration("billing", "--since", "main") == [("0005_thing_not_null", "SAFE110")]
    # Without --since every file counts, the edited 0002 included, and gadget is an old table.
    assert rules_by_migration("billing") == [("0002_thing_index", "SAFE111"), ("0002_thing_index", "SAFE112"),
                                             ("0004_gadget_index", "SAFE110"), ("0004_gadget_index", "SAFE112"),
                                             ("0005_thing_not_null", "SAFE110")]


def test_since_with_an_unknown_ref_is_a_usage_error(since_repo):
    with pytest.raises(CommandError, match="--since no-such-ref") as error:
        run_command("lint_migrations", "--since", "no-such-ref")
    assert error.value.returncode == 2


def test_explicit_files_are_the_new_migrations(since_repo):
    only_4 = str(since_repo / "0004_gadget_index.py")
    assert rules_by_migration(only_4) == [("0004_gadget_index", "SAFE110"), ("0004_gadget_index", "SAFE112")]
    assert rules_by_migration(str(since_repo / "0003_gadget.py"), only_4) == []
    with pytest.raises(CommandError, match="not_a_migration.py: no such migration file") as error:
        run_command("lint_migrations", str(since_repo / "not_a_migration.py"))
    assert error.value.returncode == 2


# -- third-party migrations and table sizes --------------------------------------

VENDOR_FILES = {
    "0001_initial.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    initial = True
    operations = [
        migrations.CreateModel("Big", [("id", models.BigAutoField(primary_key=True)),
                                       ("n", models.IntegerField(null=True))], options={"db_table": "%(big)s"}),
        migrations.CreateModel("Small", [("id", models.BigAutoField(primary_key=True)),
                                         ("n", models.IntegerField(null=True))], options={"db_table": "%(small)s"}),
    ]
""",
    "0002_changes.py": """
from django.db import migrations, models
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.RemoveField("big", "n"),
        migrations.AddIndex("small", models.Index(fields=["n"], name="small_n")),
        migrations.AddField("big", "m", models.IntegerField(null=True, db_index=True)),
    ]
""",
}


@contextlib.contextmanager
def vendored_migrations(tmp_path, names):
    """The files above as the migrations of an installed package (under site-packages)."""
    site = tmp_path / "lib" / "site-packages"
    package = site / "vendorpay"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "__init__.py").write_text("")
    for name, text in VENDOR_FILES.items():
        (package / "migrations" / name).write_text(text % names)
    sys.path.insert(0, str(site))
    try:
        with override_settings(MIGRATION_MODULES={"billing": "vendorpay.migrations"}):
            yield
    finally:
        sys.path.remove(str(site))
        for module in [m for m in sys.modules if m == "vendorpay" or m.startswith("vendorpay.")]:
            del sys.modules[module]


def test_third_party_migrations_are_told_to_use_a_maintenance_window(tmp_path):
    with vendored_migrations(tmp_path, {"big": "vendor_big", "small": "vendor_small"}):
        out, _ = run_command("lint_migrations", "billing", "--format", "json")
    findings = json.loads(out)["findings"]
    assert [f["rule"] for f in findings] == ["SAFE101", "SAFE112", "SAFE107"]
    for finding in findings:
        assert finding["third_party"] is True and finding["rows"] is None
        assert "installed package vendorpay" in finding["alternative"]
        assert "maintenance window" in finding["alternative"] and "about" not in finding["alternative"]


def test_table_sizes_rank_findings_by_expected_lock_time(tmp_path, db):
    from django.db import connection

    rate = {rule: RULES[rule].rows_per_second for rule in ("SAFE107", "SAFE112")}
    from tests.utils import execute, fill_table, unique_table

    names = {"big": unique_table("big"), "small": unique_table("small")}
    for name, rows in ((names["big"], 30_000), (names["small"], 20)):
        execute(f'CREATE TABLE "{name}" (id bigserial PRIMARY KEY, n int)')
        fill_table(name, rows, n="i")
    with vendored_migrations(tmp_path, names):
        out, _ = run_command("lint_migrations", "billing", "--format", "json", "--table-sizes")
        text, _ = run_command("lint_migrations", "billing", "--table-sizes")
    ranked = [(f["rule"], f["rows"], f["expected_lock_seconds"]) for f in json.loads(out)["findings"]]
    # The index build on the big table first, then the small one; the instant drop (no
    # lock time to rank by) keeps its place after them.
    assert ranked == [("SAFE107", 30_000, 30_000 / rate["SAFE107"]), ("SAFE112", 20, 20 / rate["SAFE112"]),
                      ("SAFE101", 30_000, None)]
    assert f"about 0.03 s of locking for ~30,000 rows at ~{rate['SAFE107']:,} rows/s" in json.loads(out)[
        "findings"][0]["alternative"]
    assert f"[table {names['big']}: ~30,000 rows, lock ~0.03 s]" in text
    assert connection.vendor == "postgresql"


def run_cli(*args, database_url="postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"):
    """manage.py lint_migrations in a subprocess, with a database that does not answer."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, DATABASE_URL=database_url)
    return subprocess.run([sys.executable, str(root / "testproject" / "manage.py"), "lint_migrations", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_exit_codes_from_the_command_line_without_a_database():
    usage = run_cli("--format", "xml")
    assert usage.returncode == 2 and "invalid choice: 'xml'" in usage.stderr
    unknown = run_cli("no_such_app")
    assert unknown.returncode == 2 and "No migrations found for: no_such_app" in unknown.stderr
    sizes = run_cli("shop", "--table-sizes", "--fail-on-risky")
    assert "could not read table sizes" in sizes.stderr and sizes.returncode == 0, sizes.stderr


def test_documented_lock_time_rates_are_the_ones_used():
    text = DOCS.read_text()
    section = text[text.index("## Ranking by table size"):]
    documented = {}
    for rules, rate in re.findall(r"^\| [^|]+ \| ((?:`SAFE\d+`,? ?)+) \| ([\d,]+) \|$", section, re.M):
        for rule in re.findall(r"SAFE\d+", rules):
            documented[rule] = int(rate.replace(",", ""))
    assert documented == {rule.id: rule.rows_per_second for rule in RULES.values() if rule.rows_per_second}


def test_tables_never_analysed_have_no_size_estimate(db):
    from django.db import connection

    from safemigrate.management.commands.lint_migrations import table_sizes
    from tests.utils import execute, fill_table, unique_table

    fresh, analysed = unique_table("fresh"), unique_table("analysed")
    execute(f'CREATE TABLE "{fresh}" (id int)')
    execute(f'INSERT INTO "{fresh}" SELECT generate_series(1, 100)')
    execute(f'CREATE TABLE "{analysed}" (id int)')
    fill_table(analysed, 100, id="i")
    sizes = table_sizes(connection)
    assert fresh not in sizes and sizes[analysed] == 100


def test_unapplied_treats_tables_the_unapplied_migrations_create_as_new(db):
    # Nothing of the fixtures is applied to the test database: every table they touch is created by
    # them (DROP INDEX included: its index is found on billing_invoice), so only the note is left.
    document = lint_json("--unapplied")
    assert sorted((f["migration"], f["rule"]) for f in document["findings"]) == [("0006_harmless", "SAFE117")]
    assert next(f for f in lint_json()["findings"] if f["rule"] == "SAFE139")["table"] == "billing_invoice"


def test_djangos_own_history_is_reported_as_third_party_and_since_skips_it(since_repo):
    out, _ = run_command("lint_migrations", "contenttypes", "--format", "json")
    removed = [f for f in json.loads(out)["findings"] if f["rule"] == "SAFE101"]
    assert [f["migration"] for f in removed] == ["0002_remove_content_type_name"]
    assert removed[0]["third_party"] and "installed package django" in removed[0]["alternative"]
    assert rules_by_migration("contenttypes", "--since", "main") == []


def test_linting_needs_no_database():
    clean = run_cli("shop", "--format", "json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["summary"]["errors"] == 0


def test_a_python_file_that_is_no_migration_is_a_usage_error():
    with pytest.raises(CommandError, match="Not migration files of an installed app") as error:
        run_command("lint_migrations", __file__)
    assert error.value.returncode == 2


def test_warnings_fail_ci_too(tmp_path):
    # 0003 has a SET NOT NULL (error, ignored here) and a RemoveIndex (warning, not ignored).
    with temporary_migration_modules(tmp_path, {"billing": IGNORE_FILES}), \
            override_settings(SAFEMIGRATE={"LINT_IGNORE": [{"rule": "SAFE110", "reason": "reviewed"}]}):
        with pytest.raises(SystemExit) as exit_:
            run_command("lint_migrations", "billing", "--fail-on-risky")
    assert exit_.value.code == 1


@pytest.mark.parametrize("options, runs_sql", [
    ({"managed": False}, False),
    ({"proxy": True}, False),
    ({"swappable": "AUTH_USER_MODEL"}, False),  # swapped out for shop.Customer below
    ({}, True),
])
def test_models_django_runs_no_sql_for(options, runs_sql):
    state = ProjectState()
    state.add_model(ModelState("shop", "User", [("id", models.BigAutoField(primary_key=True)),
                                                ("n", models.IntegerField(null=True))], options=options))
    with override_settings(AUTH_USER_MODEL="shop.Customer"):
        assert rules.runs_sql_on(state, "shop", "user") is runs_sql
        found = rules.findings(migrations.AlterField("user", "n", models.IntegerField()), state, "shop")
    assert [f.code for f in found] == (["SAFE110"] if runs_sql else [])
