"""A rename window as a state the rest of the product knows, driven by the real commands.

Release 1 renames a field (the window opens) together with other edits of
the same model; release 2 ships while release 1's contract still waits and
changes the same table again: a second rename, a type change, a constraint,
an index, a removed field, a pgtrigger trigger, a plain Django migration
and raw SQL. Every code version's statements keep working after each step,
and after the contracts the table is a plain table with what the models say.
"""

import pytest

from safemigrate.pg import views

TABLE = "relapp_item"

V0 = """
class Item(models.Model):
    name = models.CharField(max_length=50)
    title = models.CharField(max_length=50, db_index=True)
    code = models.IntegerField(unique=True)
    points = models.IntegerField(default=0)
    gone = models.CharField(max_length=10, null=True)
"""

# Release 1: the rename, with an added field, an index on the renamed field, a NULL-ability change,
# a check constraint and a pgtrigger trigger that reads the column by its new name.
V1 = """
import pgtrigger


class Item(models.Model):
    name = models.CharField(max_length=50, null=True)
    headline = models.CharField(max_length=50, db_index=True)
    code = models.IntegerField(unique=True)
    points = models.IntegerField(default=0)
    gone = models.CharField(max_length=10, null=True)
    note = models.TextField(null=True, default="n")

    class Meta:
        indexes = [models.Index(fields=["headline", "code"], name="item_headline_code")]
        constraints = [models.CheckConstraint(condition=models.Q(points__gte=0), name="item_points_gte_0")]
        triggers = [pgtrigger.Trigger(name="shout_headline", operation=pgtrigger.Insert, when=pgtrigger.Before,
                                      func="NEW.headline := upper(NEW.headline); RETURN NEW;")]
"""

# Release 2, during release 1's window: a second rename, int -> bigint (a copy swapped at expand),
# a removed field and an index.
V2 = """
import pgtrigger


class Item(models.Model):
    label = models.CharField(max_length=50, null=True)
    headline = models.CharField(max_length=50, db_index=True)
    code = models.IntegerField(unique=True)
    points = models.BigIntegerField(default=0)
    note = models.TextField(null=True, default="n")

    class Meta:
        indexes = [models.Index(fields=["headline", "code"], name="item_headline_code"),
                   models.Index(fields=["code", "points"], name="item_code_points")]
        constraints = [models.CheckConstraint(condition=models.Q(points__gte=0), name="item_points_gte_0")]
        triggers = [pgtrigger.Trigger(name="shout_headline", operation=pgtrigger.Insert, when=pgtrigger.Before,
                                      func="NEW.headline := upper(NEW.headline); RETURN NEW;")]
"""


def release(project, source, *args):
    project.models(source)
    project.run("makemigrations", "relapp", *args, input="y\n" * 6)


def write(project, columns, values):
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(values))
    return project.query(f"INSERT INTO {TABLE} ({names}) VALUES ({marks}) RETURNING id", values)[0][0]


def kind(project, name):
    rows = project.query("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name])
    return rows[0][0] if rows else None


def test_later_operations_in_the_same_and_the_next_release_target_the_base_table(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    project.query(f"INSERT INTO {TABLE} (name, title, code, points, gone) "
                  f"SELECT 'n' || i, 't' || i, i, i, 'g' FROM generate_series(1, 500) i")

    release(project, V1, "--safe")
    expand1 = project.source("0002")
    assert "RenameFieldViaView" in expand1, expand1
    project.run("migrate", "--noinput")
    assert kind(project, TABLE) == "v" and kind(project, views.base_name(TABLE)) == "r"
    # Release 0's and release 1's statements, side by side.
    write(project, ["name", "title", "code", "points", "gone"], ["v0", "t-v0", 10_001, 1, "g"])
    write(project, ["name", "headline", "code", "points", "gone", "note"], [None, "h-v1", 10_002, 2, "g", "x"])
    assert project.query(f"SELECT title, headline, note FROM {TABLE} WHERE code IN (10001, 10002) ORDER BY code") == \
        [("T-V0", "T-V0", "n"), ("H-V1", "H-V1", "x")]  # the trigger on the base table fires for both
    indexes = {name for (name,) in project.query("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                                  [views.base_name(TABLE)])}
    assert "item_headline_code" in indexes
    with pytest.raises(Exception, match="item_points_gte_0"):
        write(project, ["name", "title", "code", "points"], ["bad", "t", 10_006, -1])

    # Release 2 ships before release 1's contract.
    release(project, V2, "--safe")
    out = project.run("migrate", "--noinput")
    assert "Held back" in out.stdout
    assert kind(project, TABLE) == "v"
    # Release 0 (title, int points, gone), 1 (name, headline) and 2 (label, bigint points) all write.
    write(project, ["name", "title", "code", "points", "gone"], ["v0b", "t-v0b", 10_003, 3, "g"])
    write(project, ["name", "headline", "code", "points", "gone", "note"], ["v1b", "h-v1b", 10_004, 4, "g", "x"])
    write(project, ["label", "headline", "code", "points", "note"], ["v2", "h-v2", 10_005, 2**40, "x"])
    rows = project.query(f"SELECT code, name, label, title, headline, points FROM {TABLE} "
                         f"WHERE code >= 10003 ORDER BY code")
    assert rows == [(10_003, "v0b", "v0b", "T-V0B", "T-V0B", 3), (10_004, "v1b", "v1b", "H-V1B", "H-V1B", 4),
                    (10_005, "v2", "v2", "H-V2", "H-V2", 2**40)]
    with pytest.raises(Exception, match="item_points_gte_0"):
        write(project, ["label", "headline", "code", "points"], ["bad", "h", 10_006, -1])
    indexes = {name for (name,) in project.query("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                                  [views.base_name(TABLE)])}
    assert {"item_headline_code", "item_code_points"} <= indexes

    out = project.run("migrate_contract", "--noinput")
    assert kind(project, TABLE) == "r" and kind(project, views.base_name(TABLE)) is None
    assert columns(project, TABLE) == {"id", "label", "headline", "code", "points", "note"}
    # What the contracts removed is archived, not dropped (docs/pages/archive.md): the old int
    # column of the type change and the removed field.
    assert columns(project, TABLE, archived=True) == {"_archived_0006_points", "_archived_0007_gone"}
    assert project.query("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                         "to_regclass(%s) AND attname = 'points'", [TABLE]) == [("bigint",)]
    assert project.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]
    assert project.query(f"SELECT count(*) FROM {TABLE}") == [(505,)]
    check = project.run("makemigrations", "--check", "--dry-run", "relapp", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_plain_django_migrations_and_raw_sql_during_a_window(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    release(project, V0.replace("title =", "headline ="), "--safe")
    project.run("migrate", "--noinput")
    assert kind(project, TABLE) == "v"
    # A migration written without --safe (or by a third-party app): Django's own SQL.
    release(project, V0.replace("title =", "headline =") + "    extra = models.IntegerField(null=True, db_default=7)\n"
            "    class Meta:\n        unique_together = [('name', 'code')]\n", "--noinput")
    (path,) = [p for p in project.migrations.glob("0004*.py")]
    path.write_text(path.read_text() + """
Migration.operations.append(migrations.RunSQL(
    'ALTER TABLE relapp_item ADD COLUMN raw_sql integer; COMMENT ON COLUMN relapp_item.raw_sql IS $$r$$',
    'ALTER TABLE relapp_item DROP COLUMN raw_sql'))
""")
    project.run("migrate", "--noinput")
    assert kind(project, TABLE) == "v"
    assert project.query(f"SELECT count(*) FROM {TABLE} WHERE extra = 7 AND raw_sql IS NULL AND title = headline") \
        == [(0,)]
    write(project, ["name", "title", "code", "gone", "points"], ["old", "t", 1, "g", 0])
    assert project.query(f"SELECT extra, raw_sql, headline FROM {TABLE}") == [(7, None, "t")]
    # Rolling back the plain migration runs through the window too.
    project.run("migrate", "relapp", "0002", "--noinput")
    assert kind(project, TABLE) == "v"
    columns = {name for (name,) in project.query("SELECT attname FROM pg_attribute WHERE attrelid = "
                                                 "to_regclass(%s) AND attnum > 0", [TABLE])}
    assert "extra" not in columns and "raw_sql" not in columns and {"title", "headline"} <= columns
    project.run("migrate", "--noinput")
    project.run("migrate_contract", "--noinput")
    assert kind(project, TABLE) == "r"
    assert project.query(f"SELECT extra, raw_sql, headline FROM {TABLE}") == [(7, None, "t")]
    assert project.query("SELECT col_description(to_regclass(%s), attnum) FROM pg_attribute WHERE attrelid = "
                         "to_regclass(%s) AND attname = 'raw_sql'", [TABLE, TABLE]) == [("r",)]


def test_plan_annotate_plan_json_and_the_linter_show_the_window(project):
    import json

    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    renamed = V0.replace("title =", "headline =")
    release(project, renamed, "--safe")
    annotated = project.run("migrate", "--plan", "--annotate").stdout
    assert f"[rename window on {TABLE}: the view shows the old and the new column names until contract]" in annotated
    document = json.loads(project.run("migrate", "--plan", "--json").stdout)
    (operation,) = [op for m in document["expand"] for op in m["operations"] if op["type"] == "RenameFieldViaView"]
    assert operation["rename_window"] == {"action": "open", "table": TABLE, "old_column": "title",
                                          "new_column": "headline"}
    assert document["rename_windows"] == []
    project.run("migrate", "--noinput")
    # While the window is open: the JSON plan lists it; a later release's DDL is shown on the base table.
    release(project, renamed + "    note = models.TextField(null=True)\n", "--noinput")
    document = json.loads(project.run("migrate_contract", "--plan", "--json").stdout)
    assert document["rename_windows"] == [{"table": TABLE, "base": views.base_name(TABLE),
                                           "old_names": {"title": "headline"}}]
    (close,) = [op for m in document["contract"] for op in m["operations"] if op["type"] == "FinishRenameViaView"]
    assert close["rename_window"]["action"] == "close"
    annotated = project.run("migrate", "--plan", "--annotate").stdout
    (line,) = [line for line in annotated.splitlines() if 'ADD COLUMN "note"' in line]
    assert f"[rename window open on {TABLE}: runs on the base table; the view is re-created in the same " \
           f"transaction]" in line
    project.run("migrate", "--noinput")
    annotated = project.run("migrate_contract", "--plan", "--annotate").stdout
    assert f"closes the rename window on {TABLE}" in annotated
    # The linter: a note on the window (text output shows notes at -v 2), never a failure.
    lint = project.run("lint_migrations", "relapp", "--fail-on-risky", "-v", "2")
    assert "SAFE142" in lint.stdout and f"opens a rename window on {TABLE}" in lint.stdout
    report = json.loads(project.run("lint_migrations", "relapp", "--format", "json").stdout)
    assert [f["rule"] for f in report["findings"] if f["rule"] == "SAFE142"] == ["SAFE142"]


def test_pg_dump_and_restore_of_an_open_window_gives_the_same_window(project, tmp_path):
    import copy
    import subprocess

    from testproject.pgserver import _bindir

    bindir = _bindir()
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    project.query(f"INSERT INTO {TABLE} (name, title, code, points) SELECT 'n' || i, 't' || i, i, i "
                  f"FROM generate_series(1, 50) i")
    release(project, V0.replace("title =", "headline ="), "--safe")
    project.run("migrate", "--noinput")
    dump = tmp_path / "dump.sql"
    subprocess.run([str(bindir / "pg_dump"), "--no-owner", "-f", str(dump), project.url], check=True)
    original = project.dbname
    restored = copy.copy(project)  # the same code, on a database of its own
    restored.dbname = f"{original}_restored"
    project.query(f'CREATE DATABASE "{restored.dbname}"')
    try:
        subprocess.run([str(bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump), restored.url],
                       check=True, capture_output=True)
        assert kind(restored, TABLE) == "v" and kind(restored, views.base_name(TABLE)) == "r"
        assert restored.query(f"SELECT count(*) FROM {TABLE} WHERE title = headline") == [(50,)]
        restored.run("migrate_contract", "--noinput")
        assert kind(restored, TABLE) == "r" and kind(restored, views.base_name(TABLE)) is None
        assert restored.query(f"SELECT count(*) FROM {TABLE} WHERE headline LIKE 't%'") == [(50,)]
    finally:
        restored.drop()


def test_the_strategy_is_decided_at_makemigrations_and_checked_again_at_migrate(project):
    renamed = V0.replace("title =", "headline =")
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    project.query(f"INSERT INTO {TABLE} (name, title, code, points) SELECT 'n' || i, 't' || i, i, i "
                  f"FROM generate_series(1, 100) i")
    # makemigrations --safe sees a view on the table in its database: the copy, with the reason printed.
    project.query(f"CREATE VIEW item_report AS SELECT code FROM {TABLE}")
    project.models(renamed)
    made = project.run("makemigrations", "relapp", "--safe", input="y\n")
    assert "RenameViaCopy" in project.source("0002") and "RenameFieldViaView" not in project.source("0002")
    assert "renamed through a copy" in made.stderr and "views or rules depend on relapp_item" in made.stderr
    for name in project.files()[1:]:
        (project.migrations / f"{name}.py").unlink()
    # Written where no view depends on the table; at migrate one does: it falls back, says why.
    project.query("DROP VIEW item_report")
    project.run("makemigrations", "relapp", "--safe", input="y\n")
    assert "RenameFieldViaView" in project.source("0002")
    project.query(f"CREATE VIEW item_report AS SELECT code FROM {TABLE}")
    out = project.run("migrate", "--noinput")
    assert "views or rules depend on relapp_item" in out.stderr and "renaming through a copy instead" in out.stderr
    assert kind(project, TABLE) == "r" and {"title", "headline"} <= columns(project, TABLE)
    out = project.run("migrate_contract", "--noinput")
    assert "finishing the copy" in out.stderr
    assert columns(project, TABLE) == {"id", "name", "headline", "code", "points", "gone"}
    assert project.query(f"SELECT count(*) FROM {TABLE} WHERE headline = 't' || code") == [(100,)]


def test_rollbacks_of_both_steps_through_migrate(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    release(project, V0.replace("title =", "headline ="), "--safe")
    project.run("migrate", "--noinput")
    project.run("migrate_contract", "--noinput")
    assert kind(project, TABLE) == "r" and "headline" in columns(project, TABLE)
    contract, expand = project.files()[2], project.files()[1]
    project.run("migrate", "relapp", expand, "--noinput")  # unapplies the contract: the window opens again
    assert kind(project, TABLE) == "v" and {"title", "headline"} <= columns(project, TABLE)
    project.run("migrate", "relapp", "0001", "--noinput")  # unapplies the expand: the window closes
    assert kind(project, TABLE) == "r" and kind(project, views.base_name(TABLE)) is None
    assert "title" in columns(project, TABLE) and "headline" not in columns(project, TABLE)
    assert contract.startswith("0003_contract")


def columns(project, relation, archived=False):
    """The relation's columns; with ``archived``, only those a contract archived (``_archived_*``)."""
    names = {name for (name,) in project.query(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        [relation])}
    return {name for name in names if name.startswith("_archived_") == archived}
