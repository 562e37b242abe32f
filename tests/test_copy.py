"""RenameViaCopy and ChangeTypeViaCopy: triggers, backfill, swap, under traffic."""

import pytest
from django.db import connection, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter

from safemigrate import backfill, introspection, triggers
from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import (
    ChangeTypeViaCopy,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RenameViaCopy,
)
from safemigrate.operations.copy import in_place_type_change, shadow_column
from tests.utils import apply_operations, execute, fill_table, unapply_operations


def customer_state(table, name_field=None, extra=()):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Customer",
        [("id", models.BigAutoField(primary_key=True)),
         ("name", name_field or models.CharField(max_length=50, db_index=True)),
         ("points", models.IntegerField(default=0)), *extra],
        options={"db_table": table},
    ))
    return state


@pytest.fixture
def customers(table_name):
    state = customer_state(table_name)
    apply_operations([migrations.CreateModel(
        "Customer", list(state.models["shop", "customer"].fields.items()), options={"db_table": table_name})],
        atomic=True)
    fill_table(table_name, 2000, name="'c' || i", points="i")
    return table_name, state


def cols(table):
    return {name for (name,) in execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", [table])}


def source_of(op):
    return MigrationWriter(type("Migration", (migrations.Migration,), {"operations": [op]})("0002_x", "shop")).as_string()


def test_rename_via_copy_keeps_both_names_in_step_then_contract_drops_old(customers):
    table, state = customers
    expand = RenameViaCopy("customer", "name", "full_name")
    new_state, _ = apply_operations([expand], state)
    assert {"name", "full_name"} <= cols(table)
    assert execute(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == [(0,)]
    assert not introspection.column_info(connection, table, "full_name")["nullable"]
    editor = connection.schema_editor()
    assert introspection.index_state(connection, editor._create_index_name(table, ["full_name"]))["valid"]
    # Old code writes only "name", new code only "full_name": both columns follow.
    execute(f'INSERT INTO "{table}" (name, points) VALUES (%s, 0)', ["from-old"])
    assert execute(f'SELECT full_name FROM "{table}" WHERE name = %s', ["from-old"]) == [("from-old",)]
    execute(f'INSERT INTO "{table}" (full_name, points) VALUES (%s, 0)', ["from-new"])
    assert execute(f'SELECT name FROM "{table}" WHERE full_name = %s', ["from-new"]) == [("from-new",)]
    execute(f'UPDATE "{table}" SET name = %s WHERE id = 1', ["old-upd"])
    execute(f'UPDATE "{table}" SET full_name = %s WHERE id = 2', ["new-upd"])
    assert execute(f'SELECT full_name FROM "{table}" WHERE id = 1') == [("old-upd",)]
    assert execute(f'SELECT name FROM "{table}" WHERE id = 2') == [("new-upd",)]
    # The new name wins when one statement changes both.
    execute(f'UPDATE "{table}" SET name = %s, full_name = %s WHERE id = 3', ["a", "b"])
    assert execute(f'SELECT name, full_name FROM "{table}" WHERE id = 3') == [("b", "b")]
    # Re-running the expand step finds everything done.
    apply_operations([expand], state)
    contract = FinishRenameViaCopy("customer", "name", "full_name")
    assert contract.stage == "contract"
    apply_operations([contract], new_state)
    assert "name" not in cols(table)
    pgid = triggers.trigger_id(table, "rename", "name", "full_name")
    assert not introspection.trigger_exists(connection, table, pgid)
    # Reverse the contract: the old column comes back, filled, kept in step.
    unapply_operations([contract], new_state)
    assert execute(f'SELECT count(*) FROM "{table}" WHERE name IS DISTINCT FROM full_name') == [(0,)]
    unapply_operations([expand], state)
    assert "full_name" not in cols(table)
    assert "safemigrate.operations.RenameViaCopy(" in source_of(expand)
    assert "safemigrate.operations.FinishRenameViaCopy(" in source_of(contract)


def test_rename_via_copy_resumes_after_a_kill_during_the_backfill(customers, monkeypatch):
    table, state = customers
    real = backfill.backfill_table

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(backfill, "backfill_table", killed)
    with pytest.raises(KeyboardInterrupt):
        apply_operations([RenameViaCopy("customer", "name", "full_name")], state)
    assert "full_name" in cols(table)
    monkeypatch.setattr(backfill, "backfill_table", real)
    apply_operations([RenameViaCopy("customer", "name", "full_name")], state)
    assert execute(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == [(0,)]


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
    assert introspection.column_info(connection, table, "name")["type"] == "character varying(200)"
    assert shadow_column("name") not in cols(table)
    apply_operations([FinishChangeTypeViaCopy("customer", "name", op.field)], new_state)
    unapply_operations([op], state)
    assert introspection.column_info(connection, table, "name")["type"] == "character varying(50)"


def test_int_to_bigint_via_shadow_column_then_swap(customers):
    table, state = customers
    execute(f'CREATE INDEX "{table}_points_plain" ON "{table}" (points)')
    field = models.BigIntegerField(default=0, db_index=True)
    expand = ChangeTypeViaCopy("customer", "points", field)
    new_state, _ = apply_operations([expand], state)
    shadow = shadow_column("points")
    assert introspection.column_info(connection, table, shadow)["type"] == "bigint"
    execute(f'INSERT INTO "{table}" (name, points) VALUES (%s, %s)', ["big", 2_000_000_000])
    execute(f'UPDATE "{table}" SET points = 7 WHERE id = 1')
    assert execute(f'SELECT count(*) FROM "{table}" WHERE "{shadow}" IS DISTINCT FROM points') == [(0,)]
    apply_operations([expand], state)  # re-run: nothing left to do
    contract = FinishChangeTypeViaCopy("customer", "points", field)
    apply_operations([contract], new_state)
    info = introspection.column_info(connection, table, "points")
    assert info["type"] == "bigint" and not info["nullable"]
    assert shadow not in cols(table)
    editor = connection.schema_editor()
    assert introspection.index_state(connection, editor._create_index_name(table, ["points"]))["valid"]
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
    assert introspection.column_info(connection, table, "name")["type"] == "character varying(50)"
    pgid = triggers.trigger_id(table, "cast", "name", shadow_column("name"))
    assert not introspection.trigger_exists(connection, table, pgid)
    execute(f'INSERT INTO "{table}" (name, points) VALUES (%s, 0)', ["not a number"])
    # Fix the data, re-run: the copy resumes and finishes.
    execute(f'UPDATE "{table}" SET name = %s WHERE name !~ %s', ["0", "^[0-9]+$"])
    new_state, _ = apply_operations([expand], state)
    shadow = shadow_column("name")
    assert execute(f'SELECT count(*) FROM "{table}" WHERE "{shadow}" IS DISTINCT FROM name::int') == [(0,)]
    apply_operations([FinishChangeTypeViaCopy("customer", "name", field)], new_state)
    assert execute(f'SELECT name FROM "{table}" WHERE id = 1499') == [(1499,)]


def test_contract_refuses_when_the_expand_did_not_finish(customers, monkeypatch):
    table, state = customers

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(backfill, "backfill_table", killed)
    rename = RenameViaCopy("customer", "name", "full_name")
    retype = ChangeTypeViaCopy("customer", "points", models.BigIntegerField(default=0))
    for expand, contract in ((rename, FinishRenameViaCopy("customer", "name", "full_name")),
                             (retype, FinishChangeTypeViaCopy("customer", "points", retype.field))):
        with pytest.raises(KeyboardInterrupt):
            apply_operations([expand], state)
        target = state.clone()
        expand.state_forwards("shop", target)
        with pytest.raises(UnsafeOperationError, match="backfill has not finished"):
            apply_operations([contract], target)
    assert {"name", "points"} <= cols(table)
    assert execute(f'SELECT count(*) FROM "{table}" WHERE name IS NULL') == [(0,)]


def test_trigger_version_is_frozen_in_the_migration_file():
    # Absent means version 1 forever; any other version is written out.
    assert RenameViaCopy("customer", "name", "full_name").trigger_version == 1
    assert "trigger_version" not in source_of(RenameViaCopy("customer", "name", "full_name"))
    op = ChangeTypeViaCopy("customer", "points", models.BigIntegerField(), trigger_version=2)
    assert "trigger_version=2" in source_of(op)
    with pytest.raises(KeyError):
        triggers.upsert_sql(connection.ops.quote_name, "t", "rename", "a", "b", version=99)


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
    assert introspection.column_info(connection, table, "points")["type"] == "numeric(20,2)"
    assert execute(f"SELECT count(*) FROM {backfill.PROGRESS_TABLE} WHERE name LIKE %s", [f"{table}.%"]) == [(0,)]


def test_contract_refuses_when_a_row_copy_differs(customers):
    """Contract steps verify the copy instead of trusting the progress record."""
    table, state = customers
    expand = RenameViaCopy("customer", "name", "full_name")
    new_state, _ = apply_operations([expand], state)
    pgid = triggers.trigger_id(table, "rename", "name", "full_name")
    execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{pgid}"')
    execute(f'UPDATE "{table}" SET name = %s WHERE id = 42', ["changed behind the trigger"])
    execute(f'ALTER TABLE "{table}" ENABLE TRIGGER "{pgid}"')
    with pytest.raises(UnsafeOperationError, match="primary key 42"):
        apply_operations([FinishRenameViaCopy("customer", "name", "full_name")], new_state)
    assert "name" in cols(table)


def _catalog(table):
    """Constraint and index definitions of ``table``, names left out (meaning, not names)."""
    constraints = sorted(definition for (definition,) in execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass", [f'"{table}"']))
    indexes = sorted(execute(
        "SELECT regexp_replace(pg_get_indexdef(indexrelid), 'INDEX \\S+ ON', 'INDEX ON') FROM pg_index "
        "WHERE indrelid = %s::regclass", [f'"{table}"']))
    return constraints, [definition for (definition,) in indexes]


def _create(state, *names):
    return apply_operations([migrations.CreateModel(
        name, list(state.models["shop", name.lower()].fields.items()),
        options=dict(state.models["shop", name.lower()].options)) for name in names], atomic=True)[0]


def test_rename_keeps_foreign_key_db_default_check_and_unique_together(table_name):
    """Issue 9 item 4: what the old column carried is on the new one after contract."""
    parent = f"{table_name}_p"
    state = ProjectState()
    state.add_model(ModelState("shop", "Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": parent}))
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("owner", models.ForeignKey("shop.Parent", models.SET_NULL, null=True, db_constraint=True)),
        ("rank", models.PositiveIntegerField(db_default=5)),
        ("code", models.CharField(max_length=5)),
    ], options={"db_table": table_name, "unique_together": {("rank", "code")}}))
    state = _create(state, "Parent", "Customer")
    try:
        execute(f'INSERT INTO "{parent}" (id) VALUES (1)')
        execute(f'INSERT INTO "{table_name}" (owner_id, code) VALUES (1, \'a\'), (NULL, \'b\')')
        before = _catalog(table_name)
        for old, new in (("owner", "holder"), ("rank", "level")):
            expand = RenameViaCopy("customer", old, new)
            new_state, _ = apply_operations([expand], state)
            apply_operations([FinishRenameViaCopy("customer", old, new)], new_state)
            state = new_state
        after = _catalog(table_name)
        rename = {'"owner_id"': '"holder_id"', "owner_id": "holder_id", '"rank"': '"level"', "rank": "level"}

        def renamed(definitions):
            out = []
            for definition in definitions:
                for a, b in rename.items():
                    definition = definition.replace(a, b)
                out.append(definition)
            return sorted(out)

        assert after == (renamed(before[0]), renamed(before[1]))
        execute(f'INSERT INTO "{table_name}" (code) VALUES (\'c\')')  # the db_default fills level
        assert execute(f'SELECT level FROM "{table_name}" WHERE code = \'c\'') == [(5,)]
    finally:
        execute(f'DROP TABLE IF EXISTS "{table_name}" CASCADE')
        execute(f'DROP TABLE IF EXISTS "{parent}" CASCADE')


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
    state = _create(state, "Customer")
    fill_table(table_name, 500, qty="i", code="'c' || i")
    before = _catalog(table_name)
    names_before = sorted(n for (n,) in execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype NOT IN ('c', 'n') UNION "
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
        [f'"{table_name}"', f'"{table_name}"']))
    field = models.PositiveBigIntegerField()
    expand = ChangeTypeViaCopy("customer", "qty", field)
    new_state, _ = apply_operations([expand], state)
    apply_operations([FinishChangeTypeViaCopy("customer", "qty", field)], new_state)
    constraints, indexes = _catalog(table_name)
    assert constraints == before[0] and indexes == before[1]
    names_after = sorted(n for (n,) in execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype NOT IN ('c', 'n') UNION "
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
        [f'"{table_name}"', f'"{table_name}"']))
    assert names_after == names_before
    assert introspection.column_info(connection, table_name, "qty")["type"] == "bigint"
    with pytest.raises(Exception, match="check"):
        execute(f'INSERT INTO "{table_name}" (qty, code) VALUES (-1, \'neg\')')


def test_rename_of_a_column_without_equality_operator_keeps_writes_working(table_name):
    """Issue 9 item 9: json (and xml, point) have no '=': the trigger compares text forms."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("doc", models.JSONField(null=True)),
    ], options={"db_table": table_name}))
    state = _create(state, "Customer")
    execute(f'ALTER TABLE "{table_name}" ADD COLUMN spot point')
    execute(f"INSERT INTO \"{table_name}\" (doc, spot) VALUES ('{{\"a\": 1}}'::jsonb, point(1, 2))")
    expand = RenameViaCopy("customer", "doc", "body", trigger_version=triggers.VERSION)
    new_state, _ = apply_operations([expand], state)
    execute(f"UPDATE \"{table_name}\" SET doc = '{{\"a\": 2}}'")  # old code writes the old column
    assert execute(f"SELECT body->>'a' FROM \"{table_name}\"") == [("2",)]
    execute(f"UPDATE \"{table_name}\" SET body = '{{\"a\": 3}}'")  # new code writes the new one
    assert execute(f"SELECT doc->>'a' FROM \"{table_name}\"") == [("3",)]
    apply_operations([FinishRenameViaCopy("customer", "doc", "body")], new_state)
    assert execute(f"SELECT body->>'a' FROM \"{table_name}\"") == [("3",)]
    # A point column (no equality operator at all) renamed through raw operations.
    state.add_model(ModelState("shop", "Spot", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": table_name}))
    pgid, sql = triggers.upsert_sql(connection.ops.quote_name, table_name, "rename", "spot", "spot2", version=2)
    execute(f'ALTER TABLE "{table_name}" ADD COLUMN spot2 point')
    execute(sql)
    execute(f'UPDATE "{table_name}" SET spot = point(3, 4)')
    assert execute(f'SELECT spot2[0] FROM "{table_name}"') == [(3.0,)]


@pytest.mark.parametrize("old_field, new_field, value", [
    (models.TextField(), models.CharField(max_length=3), "abcdef"),
    (models.CharField(max_length=10), models.CharField(max_length=3), "abcdef"),
])
def test_a_value_too_long_for_the_new_type_stops_the_expand(table_name, old_field, new_field, value):
    """Issue 9 item 9: an explicit cast to varchar(n) would cut the value silently."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.BigAutoField(primary_key=True)),
                                                    ("code", old_field)], options={"db_table": table_name}))
    state = _create(state, "Customer")
    execute(f'INSERT INTO "{table_name}" (code) VALUES (\'ok\'), (%s)', [value])
    expand = ChangeTypeViaCopy("customer", "code", new_field, trigger_version=triggers.VERSION)
    with pytest.raises(UnsafeOperationError, match="primary key 2.*'abcdef'"):
        apply_operations([expand], state)
    execute(f'INSERT INTO "{table_name}" (code) VALUES (%s)', ["writable"])
    execute(f'DELETE FROM "{table_name}" WHERE length(code) > 3')
    new_state, _ = apply_operations([expand], state)
    apply_operations([FinishChangeTypeViaCopy("customer", "code", new_field)], new_state)
    assert execute(f'SELECT code FROM "{table_name}"') == [("ok",)]


def test_rename_with_db_default_keeps_the_old_codes_inserted_values(table_name):
    """The old code omits the new column: a default there must not overwrite what it wrote."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.BigAutoField(primary_key=True)),
                                                    ("rank", models.IntegerField(db_default=5))],
                               options={"db_table": table_name}))
    state = _create(state, "Customer")
    expand = RenameViaCopy("customer", "rank", "level", trigger_version=triggers.VERSION)
    new_state, _ = apply_operations([expand], state)
    execute(f'INSERT INTO "{table_name}" (rank) VALUES (1011)')  # old code
    execute(f'INSERT INTO "{table_name}" (level) VALUES (7)')  # new code
    execute(f'INSERT INTO "{table_name}" DEFAULT VALUES')  # new code relying on the default
    assert execute(f'SELECT rank, level FROM "{table_name}" ORDER BY id') == [(1011, 1011), (7, 7), (5, 5)]
    apply_operations([FinishRenameViaCopy("customer", "rank", "level")], new_state)
    execute(f'INSERT INTO "{table_name}" DEFAULT VALUES')
    assert execute(f'SELECT level FROM "{table_name}" ORDER BY id') == [(1011,), (7,), (5,), (5,)]


def test_cast_triggers_fire_after_rename_triggers():
    """PostgreSQL fires one event's BEFORE triggers in name order; a cast trigger may read
    the column a rename trigger fills (found by the oracle: a renamed foreign key to a key
    being widened lost the old code's writes in its bigint shadow)."""
    assert triggers.trigger_id("t", "rename", "d_id", "e_id") < triggers.trigger_id("t", "cast", "e_id", "e_id__sm_new")
    assert triggers.trigger_id("t", "rename", "zz", "zz2") < triggers.trigger_id("t", "cast", "a", "a__sm_new")


def test_a_cast_trigger_installed_under_its_old_name_is_replaced_and_still_counts(customers):
    """An expand started by a release that named cast triggers "safemigrate_cast_..." finishes."""
    table, state = customers
    field = models.IntegerField(null=True)
    execute(f'UPDATE "{table}" SET name = id::text')
    current, legacy = triggers.trigger_ids(table, "cast", "name", shadow_column("name"))
    assert legacy.startswith("safemigrate_cast_")
    execute(f'ALTER TABLE "{table}" ADD COLUMN "{shadow_column("name")}" integer')
    _, sql = triggers.upsert_sql(connection.ops.quote_name, table, "cast", "name", shadow_column("name"), "integer")
    execute(sql.replace(current, legacy))
    assert introspection.trigger_exists(connection, table, legacy)
    new_state, _ = apply_operations([ChangeTypeViaCopy("customer", "name", field)], state)
    assert introspection.trigger_exists(connection, table, current)
    assert not introspection.trigger_exists(connection, table, legacy)
    apply_operations([FinishChangeTypeViaCopy("customer", "name", field)], new_state)
    assert not introspection.trigger_exists(connection, table, current)
    assert execute(f'SELECT name FROM "{table}" WHERE id = 1499') == [(1499,)]
