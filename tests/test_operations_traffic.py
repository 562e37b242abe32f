"""Each schema operation on a 100k-row table under live traffic and a lock blocker.

Old-code traffic (a model that knows only the original columns) reads and
writes continuously while a Blocker keeps taking ACCESS SHARE for 1.2 s at a
time, the way long reports do. safemigrate's operations must cause no error
and no call slower than lock_timeout + 100 ms; the plain Django equivalent,
asserted at the end, stalls the same traffic for longer.
"""

import time

import pytest
from django.db import connection, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.test import override_settings

from safemigrate.operations import (
    AddCheckConstraint,
    AddColumnNullable,
    AddForeignKey,
    AddUniqueConstraint,
    AlterFieldIndexes,
    CreateIndexConcurrently,
    DropColumnDefault,
    DropIndexConcurrently,
    DropNotNull,
    SetDatabaseDefault,
    SetNotNull,
)
from tests.traffic import Blocker, Traffic
from tests.utils import apply_operations, execute, fill_table, version_of_model

pytestmark = pytest.mark.traffic

ROWS = 100_000
LOCK_TIMEOUT_MS = 200
BOUND = (LOCK_TIMEOUT_MS + 100) / 1000
FAST_RETRIES = {"LOCK_TIMEOUT_MS": LOCK_TIMEOUT_MS, "LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}


@pytest.fixture
def big(table_name):
    execute(f'CREATE TABLE "{table_name}_p" (id bigserial PRIMARY KEY)')
    execute(f'INSERT INTO "{table_name}_p" SELECT generate_series(1, 10)')
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, label varchar(20))')
    fill_table(table_name, ROWS, v="i", label="'l' || i")
    state = ProjectState()
    state.add_model(ModelState("shop", "Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": table_name + "_p"}))
    state.add_model(ModelState(
        "shop", "Item",
        [("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
         ("label", models.CharField(max_length=20, null=True))],
        options={"db_table": table_name},
    ))
    yield table_name, state
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{table_name}" CASCADE')
    execute(f'DROP TABLE IF EXISTS "{table_name}_p" CASCADE')


def old_code_workload(table):
    Item = version_of_model(
        "Item", {"v": models.IntegerField(), "label": models.CharField(max_length=20, null=True)}, table
    )

    def work(index, iteration):
        if iteration % 2:
            Item.objects.create(v=ROWS + 1_000_000 * (index + 1) + iteration, label="new")
        else:
            row = Item.objects.filter(pk=(iteration * 7919) % ROWS + 1).first()
            row.label = f"u{iteration}"
            row.save(update_fields=["label"])

    return work


OPERATIONS = {
    "add_column_nullable": lambda: [AddColumnNullable("item", "note", models.TextField(null=True))],
    "add_column_default": lambda: [AddColumnNullable("item", "cur", models.CharField(max_length=3, default="EUR"))],
    "create_index": lambda: [CreateIndexConcurrently("item", models.Index(fields=["label"], name="zdt_label_idx"))],
    "unique": lambda: [AddUniqueConstraint("item", models.UniqueConstraint(fields=["v"], name="zdt_v_uniq"))],
    "check": lambda: [AddCheckConstraint("item", models.CheckConstraint(condition=models.Q(v__gt=0), name="zdt_v_pos"))],
    "set_not_null": lambda: [SetNotNull("item", "label", models.CharField(max_length=20))],
    "foreign_key": lambda: [AddForeignKey("item", "parent", models.ForeignKey("shop.Parent", models.CASCADE, null=True))],
    "db_index": lambda: [AlterFieldIndexes("item", "v", models.IntegerField(db_index=True))],
    "drop_not_null": lambda: [DropNotNull("item", "v", models.IntegerField(null=True))],
    "database_default": lambda: [SetDatabaseDefault("item", "label", "'x'")],
    "index_then_drop_index": lambda: [
        CreateIndexConcurrently("item", models.Index(fields=["v"], name="zdt_v_idx")),
        DropIndexConcurrently("item", "zdt_v_idx"),
    ],
}


def run_under_traffic(table, operations_or_callable):
    with Blocker(table, hold=1.2) as blocker, Traffic("old code", old_code_workload(table)) as traffic:
        time.sleep(0.3)
        started = time.monotonic()
        if callable(operations_or_callable):
            operations_or_callable()
        else:
            apply_operations(*operations_or_callable)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    return traffic.result, blocker, elapsed


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_keeps_traffic_flowing(big, name):
    table, state = big
    with override_settings(SAFEMIGRATE=FAST_RETRIES):
        result, blocker, elapsed = run_under_traffic(table, (OPERATIONS[name](), state))
    assert not blocker.errors
    assert blocker.holds >= 1, "the blocker must overlap the migration"
    assert result.errors == [], result.errors[:1]
    assert result.calls > 20
    assert result.slow(BOUND) == [], f"{name}: {result} (migration took {elapsed:.2f}s)"


def test_plain_django_equivalent_stalls_the_same_traffic(big):
    """The contrast: AlterField(null=False) queues ACCESS EXCLUSIVE behind the blocker."""
    table, state = big

    def plain():
        apply_operations([migrations.AlterField("item", "label", models.CharField(max_length=20))],
                         state, atomic=True)

    result, blocker, _ = run_under_traffic(table, plain)
    assert result.worst > 0.5, str(result)
    assert len(result.slow(BOUND)) >= 1


def test_drop_column_default_is_contract_because_old_code_needs_the_default(big):
    """Run during expand, DropColumnDefault would break the old code's INSERTs: hence its stage."""
    table, state = big
    state, _ = apply_operations([AddColumnNullable("item", "cur", models.CharField(max_length=3, default="EUR"))],
                                state)
    op = DropColumnDefault("item", "cur")
    assert op.stage == "contract"
    with Traffic("old code", old_code_workload(table)) as traffic:
        time.sleep(0.2)
        apply_operations([op], state)
        time.sleep(0.3)
    assert any("not-null constraint" in error for error in traffic.result.errors)
