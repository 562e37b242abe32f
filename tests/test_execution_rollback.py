"""Rollbacks (``migrate app 000N``) keep the same lock discipline as forwards.

The three reverses that used to hold a lock through long work: DropNotNull
(validation inside the lock-holding transaction), FinishRenameViaCopy (the
whole copy back in one transaction) and an in-place type change (narrowing
with no statement timeout under ACCESS EXCLUSIVE).
"""

import pytest
from django.db import connection, models
from django.db.migrations.state import ModelState, ProjectState
from django.test import override_settings

from safemigrate.exceptions import AtomicMigrationError, UnsafeOperationError
from safemigrate.operations import ChangeTypeViaCopy, DropNotNull
from tests.test_execution_traffic import FAST_RETRIES, HEADER, ROWS, busy, state_only_initial, under_traffic  # noqa: F401
from tests.test_execution_traffic import columns, constraints
from tests.utils import apply_operations, execute, fill_table, run_command, temporary_migration_modules, unapply_operations

pytestmark = pytest.mark.traffic


def column_type(table, column):
    return execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                   "WHERE attrelid = to_regclass(%s) AND attname = %s", [f'"{table}"', column])[0][0]


def test_drop_not_null_reverse_runs_outside_a_transaction_and_stays_bounded(tmp_path, busy):
    item, parent, _ = busy
    files = {
        "0001_initial.py": state_only_initial(item, parent),
        "0002_drop_not_null.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [safemigrate.operations.DropNotNull("item", "v", models.IntegerField(null=True))]
""",
    }
    with override_settings(SAFEMIGRATE=FAST_RETRIES), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "--noinput")
        assert columns(item)["v"] is True
        (out, _), _ = under_traffic([item], item, lambda: run_command("migrate", "billing", "0001", "--noinput"))
    assert "validate the check" in out
    assert columns(item)["v"] is False
    assert [kind for kind, _ in constraints(item).values()] == ["p"], "the helper CHECK is gone"


def test_drop_not_null_reverse_refuses_inside_a_transaction(busy):
    item, _, _ = busy
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True)),
                                                ("v", models.IntegerField())], options={"db_table": item}))
    op = DropNotNull("item", "v", models.IntegerField(null=True))
    apply_operations([op], state)
    with pytest.raises(AtomicMigrationError, match="outside a transaction"):
        unapply_operations([op], state, atomic=True)
    assert columns(item)["v"] is True, "nothing changed"


def test_finish_rename_reverse_copies_back_in_batches_under_traffic(tmp_path, busy):
    item, parent, _ = busy
    files = {
        "0001_initial.py": state_only_initial(item, parent),
        "0002_expand.py": HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [safemigrate.operations.RenameViaCopy("item", "label", "title")]
""",
        "0003_contract.py": HEADER + """
class Migration(migrations.Migration):
    dependencies = [("billing", "0002_expand")]
    operations = [safemigrate.operations.FinishRenameViaCopy("item", "label", "title")]
""",
    }
    settings = dict(FAST_RETRIES, BATCH_MAX_SIZE=5000)
    with override_settings(SAFEMIGRATE=settings), temporary_migration_modules(tmp_path, {"billing": files}):
        run_command("migrate", "billing", "--noinput")
        run_command("migrate_contract", "billing", "--noinput")
        assert "label" not in columns(item)
        (out, _), _ = under_traffic([item], item, lambda: run_command("migrate", "billing", "0002", "--noinput"),
                                      text_field="title")
    batches = [line for line in out.splitlines() if "backfill existing rows" in line]
    assert batches and "batches" in batches[-1], out
    assert int(batches[-1].split(" rows in ")[1].split(" batches")[0]) > 1, batches
    assert "label" in columns(item)
    assert execute(f'SELECT count(*) FROM "{item}" WHERE label IS DISTINCT FROM title')[0][0] == 0
    assert execute(f'SELECT count(*) FROM "{item}" WHERE label IS NULL')[0][0] == 0


@pytest.fixture
def small_varchar(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, label varchar(20))')
    fill_table(table_name, 2000, v="i", label="'l' || i")
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [
        ("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
        ("label", models.CharField(max_length=20, null=True))], options={"db_table": table_name}))
    return table_name, state


def widen(table, state):
    op = ChangeTypeViaCopy("item", "label", models.CharField(max_length=50, null=True))
    apply_operations([op], state)
    assert column_type(table, "label") == "character varying(50)"
    return op


def test_in_place_type_change_reverse_is_bounded_under_traffic(small_varchar):
    table, state = small_varchar
    op = widen(table, state)
    with override_settings(SAFEMIGRATE=FAST_RETRIES):
        under_traffic([table], table, lambda: unapply_operations([op], state), rows=2000)
    assert column_type(table, "label") == "character varying(20)"


def test_in_place_type_change_reverse_refuses_a_rewrite_longer_than_the_budget(small_varchar):
    table, state = small_varchar
    fill_table(table, 300_000, v="i", label="'x' || i")
    op = widen(table, state)
    with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 5}):
        with pytest.raises(UnsafeOperationError, match=r"ChangeTypeViaCopy to varchar\(20\)"):
            unapply_operations([op], state)
    assert column_type(table, "label") == "character varying(50)"
    assert execute("SHOW statement_timeout")[0][0] == "0"
    connection.close()


def test_finish_rename_reverse_refuses_inside_a_transaction(small_varchar):
    from safemigrate.operations import FinishRenameViaCopy, RenameViaCopy

    table, state = small_varchar
    state, _ = apply_operations([RenameViaCopy("item", "label", "title")], state)
    finish = FinishRenameViaCopy("item", "label", "title")
    apply_operations([finish], state)
    with pytest.raises(AtomicMigrationError, match="copies every row back"):
        unapply_operations([finish], state, atomic=True)
    assert "label" not in columns(table)
