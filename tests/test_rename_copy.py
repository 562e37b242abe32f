"""RenameViaCopy: a new column kept equal to the old one by triggers and a backfill, then the old one dropped."""

from unittest import mock

import pytest
from django.db import connection, models
from django.db.migrations.state import ModelState, ProjectState

from safemigrate.pg import backfill, catalog, triggers
from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import (
    ChangeTypeViaCopy,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RenameViaCopy,
)
from tests.copy_tables import cols, create_models, customers, definitions, source_of  # noqa: F401 (fixture)
from tests.utils import apply_operations, execute, fill_table, unapply_operations


def test_rename_via_copy_keeps_both_names_in_step_then_contract_drops_old(customers):
    table, state = customers
    expand = RenameViaCopy("customer", "name", "full_name")
    new_state, _ = apply_operations([expand], state)
    assert {"name", "full_name"} <= cols(table)
    assert execute(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == [(0,)]
    assert not catalog.column_info(connection, table, "full_name")["nullable"]
    editor = connection.schema_editor()
    assert catalog.index_state(connection, editor._create_index_name(table, ["full_name"]))["valid"]
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
    assert not catalog.trigger_exists(connection, table, pgid)
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
    with mock.patch.dict(triggers.BODIES, {2: triggers.BODIES[1]}):  # as a later release adds one
        op = ChangeTypeViaCopy("customer", "points", models.BigIntegerField(), trigger_version=2)
        assert "trigger_version=2" in source_of(op)
    # A version this release does not know stops the load of the migration file, saying why.
    with pytest.raises(ValueError, match=r"trigger_version=99 is not a trigger body this safemigrate knows"):
        RenameViaCopy("customer", "name", "full_name", trigger_version=99)


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
    state = create_models(state, "Parent", "Customer")
    try:
        execute(f'INSERT INTO "{parent}" (id) VALUES (1)')
        execute(f'INSERT INTO "{table_name}" (owner_id, code) VALUES (1, \'a\'), (NULL, \'b\')')
        before = definitions(table_name)
        for old, new in (("owner", "holder"), ("rank", "level")):
            expand = RenameViaCopy("customer", old, new)
            new_state, _ = apply_operations([expand], state)
            apply_operations([FinishRenameViaCopy("customer", old, new)], new_state)
            state = new_state
        after = definitions(table_name)
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


def test_rename_of_a_column_without_equality_operator_keeps_writes_working(table_name):
    """Issue 9 item 9: json (and xml, point) have no '=': the trigger compares text forms."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("doc", models.JSONField(null=True)),
    ], options={"db_table": table_name}))
    state = create_models(state, "Customer")
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
    pgid, sql = triggers.upsert_sql(connection.ops.quote_name, table_name, "rename", "spot", "spot2")
    execute(f'ALTER TABLE "{table_name}" ADD COLUMN spot2 point')
    execute(sql)
    execute(f'UPDATE "{table_name}" SET spot = point(3, 4)')
    assert execute(f'SELECT spot2[0] FROM "{table_name}"') == [(3.0,)]


def test_rename_with_db_default_keeps_the_old_codes_inserted_values(table_name):
    """The old code omits the new column: a default there must not overwrite what it wrote."""
    state = ProjectState()
    state.add_model(ModelState("shop", "Customer", [("id", models.BigAutoField(primary_key=True)),
                                                    ("rank", models.IntegerField(db_default=5))],
                               options={"db_table": table_name}))
    state = create_models(state, "Customer")
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


def _table_schema(*tables):
    """The name-free schema of ``tables`` (``pg.schema_snapshot``) and safemigrate's trigger functions."""
    from safemigrate.pg import schema_snapshot

    with connection.cursor() as cursor:
        full = schema_snapshot.snapshot(cursor)
    return schema_snapshot.Schema(
        columns={t: full.columns[t] for t in tables}, indexes={t: full.indexes[t] for t in tables},
        constraints={t: full.constraints[t] for t in tables}, triggers={t: full.triggers[t] for t in tables},
        functions=[f for f in full.functions if f.startswith("safemigrate_")])


def test_reversing_a_rename_contract_brings_back_the_expand_state_and_then_the_plain_one(table_name):
    """Found by ``rehearse``: the old column came back NULLABLE, without its indexes and constraints.

    Reversing the contract must give the expand state back (the old column with
    NOT NULL, its default, indexes, unique, check and foreign key; the new
    column without the default it only gets at contract), so that contract can
    run again; reversing the expand too must give plain Django's schema.
    """
    from safemigrate.pg import schema_snapshot

    parent = f"{table_name}_p"
    state = ProjectState()
    state.add_model(ModelState("shop", "Parent", [("id", models.BigAutoField(primary_key=True))],
                               options={"db_table": parent}))
    state.add_model(ModelState("shop", "Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("name", models.CharField(max_length=50, db_index=True)),
        ("code", models.CharField(max_length=10, unique=True)),
        ("rank", models.PositiveIntegerField(db_default=5)),
        ("owner", models.ForeignKey("shop.Parent", models.CASCADE)),
        ("points", models.IntegerField(default=0)),
    ], options={"db_table": table_name, "unique_together": {("points", "name")}}))
    state = create_models(state, "Parent", "Customer")
    renames = [("name", "label"), ("code", "ref"), ("rank", "level"), ("owner", "holder")]
    try:
        execute(f'INSERT INTO "{parent}" (id) VALUES (1), (2)')
        fill_table(table_name, 300, name="'n' || i", code="'c' || i", rank="i", owner_id="1 + i %% 2", points="i")
        before = _table_schema(table_name, parent)
        expand = [RenameViaCopy("customer", old, new) for old, new in renames]
        contract = [FinishRenameViaCopy("customer", old, new) for old, new in renames]
        expanded, _ = apply_operations(expand, state)
        during_expand = _table_schema(table_name, parent)
        contracted, _ = apply_operations(contract, expanded)
        execute(f'INSERT INTO "{table_name}" (label, ref, holder_id, points) VALUES (\'new\', \'r-new\', 2, 0)')
        unapply_operations(contract, expanded)
        assert schema_snapshot.diff(during_expand, _table_schema(table_name, parent)) == []
        assert execute(f'SELECT name, code, rank, owner_id FROM "{table_name}" WHERE label = \'new\'') == [
            ("new", "r-new", 5, 2)]
        for old, new in (("name", "label"), ("code", "ref"), ("rank", "level"), ("owner_id", "holder_id")):
            assert execute(f'SELECT count(*) FROM "{table_name}" WHERE {old} IS DISTINCT FROM {new}') == [(0,)]
        # The old code works again: it writes only the old columns (and relies on rank's default).
        execute(f'INSERT INTO "{table_name}" (name, code, owner_id, points) VALUES (\'old\', \'c-old\', 1, 0)')
        assert execute(f'SELECT label, ref, level, holder_id FROM "{table_name}" WHERE name = \'old\'') == [
            ("old", "c-old", 5, 1)]
        with pytest.raises(Exception, match="null value|violates not-null"):
            execute(f'INSERT INTO "{table_name}" (name, code, owner_id, points, label) VALUES (NULL, \'x\', 1, 0, NULL)')
        # Contract again, and reverse it again: the copy back counts as the expand's copy.
        apply_operations(contract, expanded)
        unapply_operations(contract, expanded)
        assert schema_snapshot.diff(during_expand, _table_schema(table_name, parent)) == []
        unapply_operations(expand, state)
        assert schema_snapshot.diff(before, _table_schema(table_name, parent)) == []
    finally:
        execute(f'DROP TABLE IF EXISTS "{table_name}" CASCADE')
        execute(f'DROP TABLE IF EXISTS "{parent}" CASCADE')
