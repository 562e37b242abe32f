"""ChangeTypeViaCopy: in place where PostgreSQL needs no rewrite, else a shadow column filled and swapped."""

import pytest
from django.db import connection, models
from django.db.migrations.state import ModelState, ProjectState

from safemigrate.pg import backfill, catalog, triggers
from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import ChangeTypeViaCopy, FinishChangeTypeViaCopy
from safemigrate.pg.copy_steps import in_place_type_change
from safemigrate.pg.schema import shadow_column
from tests.copy_tables import cols, create_models, customers, definitions, source_of  # noqa: F401 (fixture)
from tests.utils import apply_operations, execute, fill_table, unapply_operations


@pytest.mark.parametrize("old, new, expected", [
    ("varchar(20)", "varchar(50)", True),
    ("character varying(20)", "text", True),
    ("varchar(50)", "varchar(20)", False),
    ("numeric(10,2)", "numeric(12,2)", True),
    ("numeric(10,2)", "numeric(12,3)", False),
    ("integer", "bigint", False),
    ("text", "varchar(10)", False),
])
def test_which_type_changes_are_in_place(old, new, expected):
    assert in_place_type_change(old, new) is expected


def test_widening_varchar_is_done_in_place(customers):
    table, state = customers
    op = ChangeTypeViaCopy("customer", "name", models.CharField(max_length=200, db_index=True))
    new_state, _ = apply_operations([op], state)
    assert catalog.column_info(connection, table, "name")["type"] == "character varying(200)"
    assert shadow_column("name") not in cols(table)
    apply_operations([FinishChangeTypeViaCopy("customer", "name", op.field)], new_state)
    unapply_operations([op], state)
    assert catalog.column_info(connection, table, "name")["type"] == "character varying(50)"


def test_int_to_bigint_via_shadow_column_then_swap(customers):
    table, state = customers
    execute(f'CREATE INDEX "{table}_points_plain" ON "{table}" (points)')
    field = models.BigIntegerField(default=0, db_index=True)
    expand = ChangeTypeViaCopy("customer", "points", field)
    new_state, _ = apply_operations([expand], state)
    shadow = shadow_column("points")
    assert catalog.column_info(connection, table, shadow)["type"] == "bigint"
    execute(f'INSERT INTO "{table}" (name, points) VALUES (%s, %s)', ["big", 2_000_000_000])
    execute(f'UPDATE "{table}" SET points = 7 WHERE id = 1')
    assert execute(f'SELECT count(*) FROM "{table}" WHERE "{shadow}" IS DISTINCT FROM points') == [(0,)]
    apply_operations([expand], state)  # re-run: nothing left to do
    contract = FinishChangeTypeViaCopy("customer", "points", field)
    apply_operations([contract], new_state)
    info = catalog.column_info(connection, table, "points")
    assert info["type"] == "bigint" and not info["nullable"]
    assert shadow not in cols(table)
    editor = connection.schema_editor()
    assert catalog.index_state(connection, editor._create_index_name(table, ["points"]))["valid"]
    assert execute(f'SELECT points FROM "{table}" WHERE id = 1') == [(7,)]
    assert execute(f'SELECT count(*) FROM "{table}"') == [(2001,)]
    apply_operations([contract], new_state)  # re-run: already swapped
    assert "safemigrate.operations.ChangeTypeViaCopy(" in source_of(expand)


def test_a_value_that_does_not_cast_stops_the_expand_naming_the_row(customers):
    table, state = customers
    execute(f'UPDATE "{table}" SET name = id::text')
    execute(f'UPDATE "{table}" SET name = %s WHERE id = 1500', ["fifteen hundred"])
    field = models.IntegerField(null=True)
    expand = ChangeTypeViaCopy("customer", "name", field)
    with pytest.raises(UnsafeOperationError) as caught:
        apply_operations([expand], state)
    message = str(caught.value)
    assert "primary key 1500" in message and "'fifteen hundred'" in message
    assert "Nothing irreversible" in message
    # The old column is untouched and writes of any value still work.
    assert catalog.column_info(connection, table, "name")["type"] == "character varying(50)"
    pgid = triggers.trigger_id(table, "cast", "name", shadow_column("name"))
    assert not catalog.trigger_exists(connection, table, pgid)
    execute(f'INSERT INTO "{table}" (name, points) VALUES (%s, 0)', ["not a number"])
    # Fix the data, re-run: the copy resumes and finishes.
    execute(f'UPDATE "{table}" SET name = %s WHERE name !~ %s', ["0", "^[0-9]+$"])
    new_state, _ = apply_operations([expand], state)
    shadow = shadow_column("name")
    assert execute(f'SELECT count(*) FROM "{table}" WHERE "{shadow}" IS DISTINCT FROM name::int') == [(0,)]
    apply_operations([FinishChangeTypeViaCopy("customer", "name", field)], new_state)
    assert execute(f'SELECT name FROM "{table}" WHERE id = 1499') == [(1499,)]


def test_the_same_column_changed_twice_keeps_every_value(customers):
    """Issue 9 item 1: int -> bigint, deploy, then bigint -> decimal: no value may become NULL."""
    table, state = customers
    execute(f'ALTER TABLE "{table}" ALTER COLUMN points DROP NOT NULL')
    execute(f'UPDATE "{table}" SET points = NULL WHERE id = 3')
    for field in (models.BigIntegerField(null=True), models.DecimalField(max_digits=20, decimal_places=2, null=True)):
        expand = ChangeTypeViaCopy("customer", "points", field)
        state, _ = apply_operations([expand], state)
        apply_operations([FinishChangeTypeViaCopy("customer", "points", field)], state)
        assert execute(f'SELECT count(*) FROM "{table}" WHERE points IS NULL') == [(1,)]
        assert execute(f'SELECT points FROM "{table}" WHERE id = 1500') == [(1500,)]
    assert catalog.column_info(connection, table, "points")["type"] == "numeric(20,2)"
    assert execute(f"SELECT count(*) FROM {backfill.PROGRESS_TABLE} WHERE name LIKE %s", [f"{table}.%"]) == [(0,)]


def test_type_change_keeps_checks_unique_together_and_meta_objects(table_name):
    """Issue 9 item 6: the shadow column gets every object that names the field, with the same names."""
    options = {
        "db_table": table_name,
        "unique_together": {("qty", "code")},
        "indexes": [models.Index(fields=["code", "qty"], name="cust_code_qty_idx")],
        "constraints": [
            models.UniqueConstraint(fields=["qty"], condition=models.Q(code="x"), name="cust_qty_x_uniq"),
            models.UniqueConstraint(fields=["qty", "id"], name="cust_qty_id_uniq"),
            models.CheckConstraint(condition=models.Q(qty__lt=1_000_000), name="cust_qty_small"),
        ],
    }
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("qty", models.PositiveIntegerField()),
        ("code", models.CharField(max_length=5)),
    ], options=options))
    state = create_models(state, "Customer")
    fill_table(table_name, 500, qty="i", code="'c' || i")
    before = definitions(table_name)
    names_before = sorted(n for (n,) in execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype NOT IN ('c', 'n') UNION "
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
        [f'"{table_name}"', f'"{table_name}"']))
    field = models.PositiveBigIntegerField()
    expand = ChangeTypeViaCopy("customer", "qty", field)
    new_state, _ = apply_operations([expand], state)
    apply_operations([FinishChangeTypeViaCopy("customer", "qty", field)], new_state)
    constraints, indexes = definitions(table_name)
    assert constraints == before[0] and indexes == before[1]
    names_after = sorted(n for (n,) in execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype NOT IN ('c', 'n') UNION "
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
        [f'"{table_name}"', f'"{table_name}"']))
    assert names_after == names_before
    assert catalog.column_info(connection, table_name, "qty")["type"] == "bigint"
    with pytest.raises(Exception, match="check"):
        execute(f'INSERT INTO "{table_name}" (qty, code) VALUES (-1, \'neg\')')


@pytest.mark.parametrize("old_field, new_field, value", [
    (models.TextField(), models.CharField(max_length=3), "abcdef"),
    (models.CharField(max_length=10), models.CharField(max_length=3), "abcdef"),
])
def test_a_value_too_long_for_the_new_type_stops_the_expand(table_name, old_field, new_field, value):
    """Issue 9 item 9: an explicit cast to varchar(n) would cut the value silently."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.BigAutoField(primary_key=True)),
                                                    ("code", old_field)], options={"db_table": table_name}))
    state = create_models(state, "Customer")
    execute(f'INSERT INTO "{table_name}" (code) VALUES (\'ok\'), (%s)', [value])
    expand = ChangeTypeViaCopy("customer", "code", new_field, trigger_version=triggers.VERSION)
    with pytest.raises(UnsafeOperationError, match="primary key 2.*'abcdef'"):
        apply_operations([expand], state)
    execute(f'INSERT INTO "{table_name}" (code) VALUES (%s)', ["writable"])
    execute(f'DELETE FROM "{table_name}" WHERE length(code) > 3')
    new_state, _ = apply_operations([expand], state)
    apply_operations([FinishChangeTypeViaCopy("customer", "code", new_field)], new_state)
    assert execute(f'SELECT code FROM "{table_name}"') == [("ok",)]


def test_a_column_under_an_exclusion_constraint_is_not_copied(table_name):
    """The copy would drop the constraint with the old column, and it cannot be rebuilt without a long lock."""
    from django.contrib.postgres.constraints import ExclusionConstraint

    execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("qty", models.IntegerField()),
    ], options={"db_table": table_name,
                "constraints": [ExclusionConstraint(name="cust_qty_excl", expressions=[("qty", "=")])]}))
    state = create_models(state, "Customer")
    fill_table(table_name, 10, qty="i")
    with pytest.raises(UnsafeOperationError, match="exclusion constraint cust_qty_excl .*RemoveConstraint"):
        apply_operations([ChangeTypeViaCopy("customer", "qty", models.BigIntegerField())], state)
    assert catalog.column_info(connection, table_name, "qty")["type"] == "integer"
    assert not catalog.column_exists(connection, table_name, shadow_column("qty"))
