"""Columns, indexes and constraints: forwards, backwards, re-run, failures, SQL."""

import pytest
from django.db import connection, migrations, models
from django.db.migrations.state import ProjectState
from django.db.migrations.writer import MigrationWriter

from safemigrate.pg import catalog
from safemigrate.exceptions import AtomicMigrationError, NotPostgreSQLError, UnsafeOperationError
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
    ReplaceForeignKey,
    SetNotNull,
    ValidateConstraint,
)
from safemigrate.pg.reporting import Report, collecting
from tests.utils import apply_operations, execute, fill_table, unapply_operations


@pytest.fixture
def item(table_name):
    """A table with 1000 rows and its migration state (model ``Item``)."""
    state, _ = apply_operations([
        migrations.CreateModel(
            "Item",
            [("id", models.BigAutoField(primary_key=True)), ("v", models.IntegerField()),
             ("label", models.CharField(max_length=20, null=True))],
            options={"db_table": table_name},
        )
    ])
    fill_table(table_name, 1000, v="i", label="'l' || i")
    return table_name, state


def column(table, name):
    return catalog.column_info(connection, table, name)


def run(ops, state, atomic=False):
    report = Report()
    with collecting(report):
        new_state, _ = apply_operations(ops, state, atomic=atomic)
    return new_state, report


def roundtrip(operation):
    migration = type("Migration", (migrations.Migration,), {"operations": [operation], "dependencies": []})
    source = MigrationWriter(migration("0002_x", "shop")).as_string()
    assert f"safemigrate.operations.{operation.__class__.__name__}(" in source
    namespace = {}
    exec(compile(source, "<migration>", "exec"), namespace)
    rebuilt = namespace["Migration"].operations[0]
    assert rebuilt.deconstruct()[2].keys() == operation.deconstruct()[2].keys()
    return rebuilt


def test_add_column_nullable_and_not_null_with_constant_default(item):
    table, state = item
    ops = [
        AddColumnNullable("item", "note", models.TextField(null=True)),
        AddColumnNullable("item", "currency", models.CharField(max_length=3, default="EUR")),
    ]
    new_state, report = run(ops, state)
    assert column(table, "note")["nullable"]
    info = column(table, "currency")
    assert not info["nullable"] and info["default"].startswith("'EUR'")
    # Old code does not know the column: its INSERT still works.
    execute(f'INSERT INTO "{table}" (v) VALUES (-1)')
    assert execute(f'SELECT currency FROM "{table}" WHERE v = -1') == [("EUR",)]
    assert execute(f'SELECT count(*) FROM "{table}" WHERE currency = %s', ["EUR"]) == [(1001,)]
    # Re-running finds the columns and skips.
    _, again = run(ops, state)
    assert all(record.skipped for record in again.steps)
    unapply_operations(ops, state)
    assert column(table, "note") is None and column(table, "currency") is None
    assert roundtrip(ops[1]).field.default == "EUR"


@pytest.mark.parametrize("field", [
    models.UUIDField(default=__import__("uuid").uuid4),
    models.IntegerField(),
])
def test_add_column_refuses_defaults_that_need_a_rewrite(item, field):
    table, state = item
    with pytest.raises(UnsafeOperationError, match="SetNotNull"):
        run([AddColumnNullable("item", "bad", field)], state)
    assert column(table, "bad") is None


def test_add_column_with_unique_builds_the_index_concurrently(item):
    table, state = item
    run([AddColumnNullable("item", "code", models.CharField(max_length=10, null=True, unique=True))], state)
    name = connection.schema_editor()._create_index_name(table, ["code"], suffix="_uniq")
    assert catalog.constraint_state(connection, table, name)["type"] == "u"


def test_drop_column_default_is_contract_and_reversible(item):
    table, state = item
    state, _ = run([AddColumnNullable("item", "currency", models.CharField(max_length=3, default="EUR"))], state)
    op = DropColumnDefault("item", "currency")
    assert op.stage == "contract"
    run([op], state)
    assert column(table, "currency")["default"] is None
    unapply_operations([op], state)
    assert column(table, "currency")["default"].startswith("'EUR'")
    roundtrip(op)


def test_set_not_null_refuses_nulls_and_leaves_schema_as_it_was(item):
    table, state = item
    execute(f'UPDATE "{table}" SET label = NULL WHERE v <= 3')
    op = SetNotNull("item", "label", models.CharField(max_length=20), stage="contract")
    with pytest.raises(UnsafeOperationError, match="3 rows hold NULL"):
        run([op], state)
    assert column(table, "label")["nullable"]
    assert execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'", [f'"{table}"']) == [(0,)]


def test_set_not_null_resumes_after_a_kill_between_steps(item):
    table, state = item
    op = SetNotNull("item", "label", models.CharField(max_length=20), stage="contract")
    editor = connection.schema_editor()
    check = editor._create_index_name(table, ["label"], suffix="_notnull")
    # A run killed right after its first step left a NOT VALID check behind.
    execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "{check}" CHECK (label IS NOT NULL) NOT VALID')
    new_state, report = run([op], state)
    assert not column(table, "label")["nullable"]
    assert catalog.constraint_state(connection, table, check) is None
    assert [r.skipped for r in report.steps][:1] == [True]
    assert roundtrip(op).stage == "contract"
    unapply_operations([op], state)
    assert column(table, "label")["nullable"]


def test_set_not_null_in_an_atomic_migration_is_refused_before_any_change(item):
    table, state = item
    with pytest.raises(AtomicMigrationError, match="atomic = False"):
        run([SetNotNull("item", "label", models.CharField(max_length=20))], state, atomic=True)
    assert column(table, "label")["nullable"]


def test_drop_not_null_and_back(item):
    table, state = item
    op = DropNotNull("item", "v", models.IntegerField(null=True))
    run([op], state)
    assert column(table, "v")["nullable"]
    unapply_operations([op], state)
    assert not column(table, "v")["nullable"]


def test_create_index_concurrently_rebuilds_an_invalid_leftover(item):
    table, state = item
    execute(f'UPDATE "{table}" SET label = %s WHERE v <= 2', ["dup"])
    # An earlier failed build: a unique build over duplicates leaves an INVALID index.
    with pytest.raises(Exception):
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE UNIQUE INDEX CONCURRENTLY "item_label_idx" ON "{table}" (label)')
    assert catalog.index_state(connection, "item_label_idx")["valid"] is False
    op = CreateIndexConcurrently("item", models.Index(fields=["label"], name="item_label_idx"))
    new_state, report = run([op], state)
    assert catalog.index_state(connection, "item_label_idx") == {"valid": True, "table": table, "unique": False,
                                                                "partitioned": False}
    assert "INVALID" in report.steps[0].detail
    _, again = run([op], state)
    assert again.steps[0].skipped
    drop = DropIndexConcurrently("item", "item_label_idx")
    run([drop], new_state)
    assert catalog.index_state(connection, "item_label_idx") is None
    unapply_operations([drop], new_state)
    assert catalog.index_state(connection, "item_label_idx")["valid"]
    roundtrip(op), roundtrip(drop)


def test_create_index_concurrently_needs_a_non_atomic_migration(item):
    _, state = item
    op = CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_v_idx"))
    with pytest.raises(AtomicMigrationError):
        run([op], state, atomic=True)
    assert catalog.index_state(connection, "item_v_idx") is None


def test_sql_shows_concurrently_and_lock_timeout(item):
    _, state = item
    op = CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_v_idx"))
    _, sql = apply_operations([op, SetNotNull("item", "label", models.CharField(max_length=20))],
                              state, collect_sql=True)
    text = "\n".join(sql)
    assert 'CREATE INDEX CONCURRENTLY "item_v_idx"' in text
    assert "lock_timeout = 200ms" in text and "NOT VALID" in text and "VALIDATE CONSTRAINT" in text


def test_unique_constraint_with_duplicates_fails_cleanly_then_succeeds(item):
    table, state = item
    execute(f'UPDATE "{table}" SET v = 1 WHERE v = 2')
    op = AddUniqueConstraint("item", models.UniqueConstraint(fields=["v"], name="item_v_uniq"))
    with pytest.raises(UnsafeOperationError, match="duplicate"):
        run([op], state)
    assert catalog.index_state(connection, "item_v_uniq") is None
    execute(f'UPDATE "{table}" SET v = 2 WHERE id = 2')
    new_state, _ = run([op], state)
    assert catalog.constraint_state(connection, table, "item_v_uniq") == {"validated": True, "type": "u", "on_delete": None}
    unapply_operations([op], state)
    assert catalog.constraint_state(connection, table, "item_v_uniq") is None
    roundtrip(op)


def test_conditional_unique_constraint_is_a_concurrent_unique_index(item):
    table, state = item
    op = AddUniqueConstraint(
        "item", models.UniqueConstraint(fields=["label"], condition=models.Q(v__gt=10), name="item_label_cond")
    )
    run([op], state)
    assert catalog.index_state(connection, "item_label_cond")["unique"]


def test_check_constraint_not_valid_then_validated(item):
    table, state = item
    bad = AddCheckConstraint("item", models.CheckConstraint(condition=models.Q(v__gt=5), name="item_v_gt5"))
    with pytest.raises(UnsafeOperationError, match="violate"):
        run([bad], state)
    assert catalog.constraint_state(connection, table, "item_v_gt5") is None
    good = AddCheckConstraint("item", models.CheckConstraint(condition=models.Q(v__gt=0), name="item_v_pos"))
    run([good], state)
    assert catalog.constraint_state(connection, table, "item_v_pos") == {"validated": True, "type": "c", "on_delete": None}
    roundtrip(good)


def test_validate_constraint_standalone(item):
    table, state = item
    execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "item_v_nn" CHECK (v IS NOT NULL) NOT VALID')
    op = ValidateConstraint("item", "item_v_nn")
    run([op], state)
    assert catalog.constraint_state(connection, table, "item_v_nn")["validated"]
    roundtrip(op)


def test_add_foreign_key_builds_index_and_validates(item, table_name):
    table, state = item
    state, _ = run([migrations.CreateModel(
        "Parent", [("id", models.BigAutoField(primary_key=True))], options={"db_table": table + "_p"}
    )], state)
    try:
        execute(f'INSERT INTO "{table}_p" (id) SELECT generate_series(1, 10)')
        op = AddForeignKey("item", "parent", models.ForeignKey("shop.Parent", models.CASCADE, null=True))
        new_state, report = run([op], state)
        with connection.cursor() as cursor:
            constraints = connection.introspection.get_constraints(cursor, table)
        fks = [c for c in constraints.values() if c["foreign_key"]]
        assert len(fks) == 1 and fks[0]["columns"] == ["parent_id"]
        assert any(c["index"] and c["columns"] == ["parent_id"] and not c["foreign_key"] for c in constraints.values())
        assert execute("SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
                       [f'"{table}"']) == [(True,)]
        _, again = run([op], state)
        assert all(r.skipped for r in again.steps if r.step != "validate foreign key (reads and writes continue)")
        roundtrip(op)
    finally:
        execute(f'DROP TABLE IF EXISTS "{table}_p" CASCADE')


@pytest.mark.skipif(not hasattr(models, "DB_CASCADE"), reason="database-level on_delete is new in Django 6.1")
def test_replace_foreign_key_changes_on_delete_at_contract_and_back(item, table_name):
    """The state already has the new on_delete (changed at expand); the constraint follows here."""
    table, state = item
    state, _ = run([migrations.CreateModel(
        "Parent", [("id", models.BigAutoField(primary_key=True))], options={"db_table": table + "_p"}
    )], state)
    deletes = ("SELECT confdeltype, convalidated FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
               [f'"{table}"'])
    try:
        old = models.ForeignKey("shop.Parent", models.DB_CASCADE, null=True)
        state, _ = run([AddForeignKey("item", "parent", old)], state)
        assert execute(*deletes) == [("c", True)]
        state, _ = run([migrations.SeparateDatabaseAndState(state_operations=[migrations.AlterField(
            "item", "parent", models.ForeignKey("shop.Parent", models.CASCADE, null=True))])], state)
        op = ReplaceForeignKey("item", "parent", field=old)
        new_state, report = run([op], state)
        assert execute(*deletes) == [("a", True)]
        _, again = run([op], new_state)
        assert all(r.skipped for r in again.steps), again.steps
        unapply_operations([op], state)
        assert execute(*deletes) == [("c", True)]
        roundtrip(op)
    finally:
        execute(f'DROP TABLE IF EXISTS "{table}_p" CASCADE')


def test_alter_field_indexes_uses_django_names(item):
    table, state = item
    op = AlterFieldIndexes("item", "label", models.CharField(max_length=20, null=True, db_index=True))
    new_state, _ = run([op], state)
    editor = connection.schema_editor()
    assert catalog.index_state(connection, editor._create_index_name(table, ["label"]))["valid"]
    assert catalog.index_state(connection, editor._create_index_name(table, ["label"], suffix="_like"))
    # Plain Django's AlterField back finds and drops what we created.
    apply_operations([migrations.AlterField("item", "label", models.CharField(max_length=20, null=True))],
                     new_state, atomic=True)
    assert catalog.index_state(connection, editor._create_index_name(table, ["label"])) is None
    unique = AlterFieldIndexes("item", "v", models.IntegerField(unique=True))
    uniq_state, _ = run([unique], state)
    assert catalog.constraint_state(connection, table, editor._create_index_name(table, ["v"], suffix="_uniq"))
    unapply_operations([unique], state)
    assert catalog.constraint_state(connection, table, editor._create_index_name(table, ["v"], suffix="_uniq")) is None
    roundtrip(op)


def test_non_postgresql_connection_is_refused_before_any_sql():
    class OtherDatabase:
        vendor = "mysql"
        alias = "legacy"

    class Editor:
        connection = OtherDatabase()

    op = AddColumnNullable("item", "x", models.IntegerField(null=True))
    with pytest.raises(NotPostgreSQLError, match="runs only on PostgreSQL.*'legacy'"):
        op.runs_here("shop", Editor(), ProjectState())


def test_unique_constraint_resumes_after_a_kill_between_build_and_attach(item):
    table, state = item
    # The index was built, then the run died before ADD CONSTRAINT ... USING INDEX.
    execute(f'CREATE UNIQUE INDEX "item_v_uniq" ON "{table}" (v)')
    op = AddUniqueConstraint("item", models.UniqueConstraint(fields=["v"], name="item_v_uniq"))
    _, report = run([op], state)
    assert report.steps[0].skipped  # the valid index was kept, not rebuilt
    assert catalog.constraint_state(connection, table, "item_v_uniq") == {"validated": True, "type": "u", "on_delete": None}


def test_check_constraint_resumes_after_a_kill_before_validate(item):
    table, state = item
    execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "item_v_pos" CHECK (v > 0) NOT VALID')
    op = AddCheckConstraint("item", models.CheckConstraint(condition=models.Q(v__gt=0), name="item_v_pos"))
    _, report = run([op], state)
    assert [r.skipped for r in report.steps] == [True, False]
    assert catalog.constraint_state(connection, table, "item_v_pos")["validated"]


def test_unique_nulls_not_distinct_is_built_concurrently_and_attached_bounded(item):
    """Issue 9 item 10: nulls_distinct=False no longer runs ADD CONSTRAINT unbounded (a full scan under lock)."""
    table, state = item
    op = AddUniqueConstraint(
        "item", models.UniqueConstraint(fields=["label"], name="item_label_nnd", nulls_distinct=False))
    _, sql = apply_operations([op], state, collect_sql=True)
    text = "\n".join(sql)
    assert "CREATE UNIQUE INDEX CONCURRENTLY" in text and "NULLS NOT DISTINCT" in text
    assert "UNIQUE USING INDEX" in text and "lock_timeout" in text
    execute(f'UPDATE "{table}" SET label = NULL WHERE id IN (1, 2)')
    with pytest.raises(UnsafeOperationError, match="duplicate"):
        run([op], state)
    execute(f'UPDATE "{table}" SET label = \'one null\' WHERE id = 1')
    run([op], state)
    assert catalog.constraint_state(connection, table, "item_label_nnd") == {"validated": True, "type": "u", "on_delete": None}
    assert execute("SELECT indnullsnotdistinct FROM pg_index WHERE indexrelid = %s::regclass",
                   ['"item_label_nnd"']) == [(True,)]


def test_the_optimizer_never_folds_a_safe_operation_into_a_plain_one():
    """squashmigrations / makemigrations --update: AddField + AlterField would become a
    plain AddField (a long lock); safe operations move past unrelated ones but never merge."""
    from django.db.migrations.optimizer import MigrationOptimizer

    add = AddColumnNullable("item", "note", models.TextField(null=True))
    alter = migrations.AlterField("item", "note", models.TextField(default="x"))
    optimized = MigrationOptimizer().optimize([add, alter], "shop")
    assert [type(op).__name__ for op in optimized] == ["AddColumnNullable", "AlterField"]
    # Unrelated operations still pass each other, and a pair that cancels still cancels.
    other = migrations.AddField("other", "flag", models.BooleanField(null=True))
    assert MigrationOptimizer().optimize([add, other, migrations.RemoveField("item", "note")], "shop") == [other]
