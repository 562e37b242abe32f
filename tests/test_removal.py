"""Removing a field or model in two stages, proven under live traffic."""

import time

import pytest
from django.db import connection, connections, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.test import override_settings

from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import DropColumn, DropTable, RemoveFieldSafely, RemoveModelSafely
from tests.traffic import Blocker, Traffic
from tests.utils import (
    apply_operations,
    execute,
    fill_table,
    forget_migrations,
    run_command,
    temporary_migration_modules,
    unapply_operations,
    unique_table,
    version_of_model,
)


def item_state(table):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Item",
        [("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
         ("old", models.TextField())],
        options={"db_table": table},
    ))
    return state


def column(table, name):
    rows = execute("SELECT is_nullable FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
                   [table, name])
    return rows[0][0] if rows else None


def writer_source(op):
    return MigrationWriter(type("Migration", (migrations.Migration,), {"operations": [op]})("0002_x", "shop")).as_string()


def test_remove_field_safely_then_drop_column(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, old text NOT NULL)')
    state = item_state(table_name)
    expand = RemoveFieldSafely("item", "old")
    new_state, _ = apply_operations([expand], state)
    assert "old" not in new_state.models["shop", "item"].fields
    assert column(table_name, "old") == "YES"
    # New code inserts without the column.
    execute(f'INSERT INTO "{table_name}" (v) VALUES (1)')
    apply_operations([expand], state)  # re-run: nothing left to do
    contract = DropColumn("item", "old", field=models.TextField())
    assert contract.stage == "contract"
    apply_operations([contract], new_state)
    assert column(table_name, "old") is None
    apply_operations([contract], new_state)  # re-run: IF EXISTS
    unapply_operations([contract], new_state)
    assert column(table_name, "old") == "YES"
    assert "safemigrate.operations.DropColumn(" in writer_source(contract)
    assert "safemigrate.operations.RemoveFieldSafely(" in writer_source(expand)


def test_remove_model_safely_then_drop_table(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, old text)')
    state = item_state(table_name)
    new_state, _ = apply_operations([RemoveModelSafely("Item")], state)
    assert ("shop", "item") not in new_state.models
    assert execute("SELECT to_regclass(%s) IS NOT NULL", [table_name]) == [(True,)]
    drop = DropTable(table_name)
    assert drop.stage == "contract" and drop.reversible  # through the archive (tests/test_archive.py)
    apply_operations([drop], new_state)
    assert execute("SELECT to_regclass(%s) IS NULL", [table_name]) == [(True,)]
    apply_operations([drop], new_state)
    unapply_operations([drop], new_state)  # the archived table moves back
    assert execute("SELECT to_regclass(%s) IS NOT NULL", [table_name]) == [(True,)]
    assert "safemigrate.operations.DropTable(" in writer_source(drop)


def test_drop_table_refuses_while_foreign_keys_point_at_it(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY)')
    execute(f'CREATE TABLE "{table_name}_c" (id bigserial PRIMARY KEY, p bigint REFERENCES "{table_name}")')
    try:
        with pytest.raises(UnsafeOperationError, match=f"{table_name}_c"):
            apply_operations([DropTable(table_name)], ProjectState())
        assert execute("SELECT to_regclass(%s) IS NOT NULL", [table_name]) == [(True,)]
    finally:
        execute(f'DROP TABLE "{table_name}_c"')


HEADER = "from django.db import migrations, models\nimport safemigrate.operations\n"


@pytest.mark.traffic
def test_two_stage_field_removal_under_old_and_new_code_traffic(tmp_path, transactional_db):
    table = unique_table("rm")
    files = {
        "0001_initial.py": HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Item", [
        ("id", models.BigAutoField(primary_key=True)),
        ("v", models.IntegerField()),
        ("old", models.TextField()),
    ], options={{"db_table": "{table}"}})]
""",
        "0002_expand_remove_item_old.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [safemigrate.operations.RemoveFieldSafely("item", "old")]
""",
        "0003_contract_remove_item_old.py": HEADER + """
class Migration(migrations.Migration):
    stage = "contract"
    dependencies = [("billing", "0002_expand_remove_item_old")]
    operations = [safemigrate.operations.DropColumn("item", "old", field=models.TextField())]
""",
    }
    Old = version_of_model("Item", {"v": models.IntegerField(), "old": models.TextField()}, table, "billing")
    New = version_of_model("Item", {"v": models.IntegerField()}, table, "billing")

    def old_code(index, iteration):
        if iteration % 2:
            Old.objects.create(v=1_000_000 + index * 100_000 + iteration, old="o")
        else:
            row = Old.objects.get(pk=iteration % 1000 + 1)
            assert row.old is not None
            row.v = row.v
            row.save()

    def new_code(index, iteration):
        if iteration % 2:
            New.objects.create(v=2_000_000 + index * 100_000 + iteration)
        else:
            New.objects.filter(pk=iteration % 1000 + 1).update(v=models.F("v"))
            list(New.objects.filter(pk__lte=5))

    try:
        with temporary_migration_modules(tmp_path, {"billing": files}), \
                override_settings(SAFEMIGRATE={"LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}):
            run_command("migrate", "billing", "0001", "--noinput")
            fill_table(table, 100_000, v="i", old="'o' || i")
            with Blocker(table) as blocker:
                with Traffic("old code", old_code) as old_traffic:
                    time.sleep(0.3)
                    out, _ = run_command("migrate", "--noinput")
                    assert "Held back 1" in out
                    with Traffic("new code", new_code) as new_traffic_1:
                        time.sleep(1.0)  # the rollout: both versions side by side
                with Traffic("new code", new_code) as new_traffic_2:
                    time.sleep(0.3)
                    run_command("migrate_contract", "--noinput")
                    time.sleep(0.3)
        results = [old_traffic.result, new_traffic_1.result, new_traffic_2.result]
        assert blocker.holds >= 2 and not blocker.errors
        for result in results:
            assert result.errors == [], result.errors[:1]
            assert result.calls > 10
            assert result.slow(0.3) == [], str(result)
        assert execute("SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name = 'old'",
                       [table]) == [(0,)]
        written = old_traffic.result.calls // 2 + new_traffic_1.result.calls // 2 + new_traffic_2.result.calls // 2
        assert execute(f'SELECT count(*) FROM "{table}" WHERE v > 1000000')[0][0] >= written - 6
        assert execute(f'SELECT count(*) FROM "{table}" WHERE v <= 100000') == [(100_000,)]
    finally:
        connections.close_all()
        execute(f'DROP TABLE IF EXISTS "{table}"')
        forget_migrations("billing")


def test_drop_column_of_a_foreign_key_reverses_with_the_target_key_type(table_name):
    execute(f'CREATE TABLE "{table_name}_p" (id bigserial PRIMARY KEY)')
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, parent_id bigint REFERENCES "{table_name}_p")')
    state = ProjectState()
    state.add_model(ModelState("shop", "Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": f"{table_name}_p"}))
    state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": table_name}))
    op = DropColumn("item", "parent_id", field=models.ForeignKey("shop.Parent", models.CASCADE))
    try:
        apply_operations([op], state)
        assert column(table_name, "parent_id") is None
        unapply_operations([op], state)
        assert execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND "
                       "column_name = 'parent_id'", [table_name]) == [("bigint",)]
    finally:
        execute(f'DROP TABLE IF EXISTS "{table_name}_p" CASCADE')


def test_drop_column_reverses_to_an_empty_nullable_column_without_its_indexes_or_constraints(table_name):
    """As documented: the data is gone, and NOT NULL cannot come back on an empty column of a table with rows."""
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, code varchar(10) NOT NULL UNIQUE)')
    execute(f'CREATE INDEX "{table_name}_code_like" ON "{table_name}" (code varchar_pattern_ops)')
    fill_table(table_name, 50, code="'c' || i")
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": table_name}))
    op = DropColumn("item", "code", field=models.CharField(max_length=10, unique=True))
    apply_operations([op], state)
    unapply_operations([op], state)
    assert column(table_name, "code") == "YES"
    assert execute(f'SELECT count(*) FROM "{table_name}" WHERE code IS NOT NULL') == [(0,)]
    assert execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", [f'"{table_name}"']) == [(1,)]
    assert execute("SELECT contype FROM pg_constraint WHERE conrelid = %s::regclass AND contype <> 'n'",
                   [f'"{table_name}"']) == [("p",)]


def test_removing_a_foreign_key_field_drops_its_constraint_at_expand(table_name):
    """Issue 9 item 3: the new code deletes parents as soon as it runs; the FK must not stop it."""
    parent = f"{table_name}_p"
    state = ProjectState()
    state.add_model(ModelState("shop", "Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": parent}))
    state.add_model(ModelState("shop", "Item", [
        ("id", models.BigAutoField(primary_key=True)),
        ("parent", models.ForeignKey("shop.Parent", models.CASCADE)),
    ], options={"db_table": table_name}))
    state, _ = apply_operations([migrations.CreateModel(name, list(state.models["shop", name.lower()].fields.items()),
                                                        options={"db_table": state.models["shop", name.lower()].options["db_table"]})
                                 for name in ("Parent", "Item")], ProjectState())
    fks = ("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'")
    try:
        execute(f'INSERT INTO "{parent}" (id) VALUES (1), (2)')
        execute(f'INSERT INTO "{table_name}" (parent_id) VALUES (1)')
        expand = RemoveFieldSafely("item", "parent")
        apply_operations([expand], state)
        assert execute(fks, [f'"{table_name}"']) == [(0,)]
        execute(f'DELETE FROM "{parent}" WHERE id = 1')  # what the new code does: no error
        apply_operations([expand], state)  # re-run: nothing left to do
        execute(f'UPDATE "{table_name}" SET parent_id = 2')
        unapply_operations([expand], state)
        assert execute(fks + " AND convalidated", [f'"{table_name}"']) == [(1,)]
    finally:
        execute(f'DROP TABLE IF EXISTS "{table_name}" CASCADE')
        execute(f'DROP TABLE IF EXISTS "{parent}" CASCADE')
