"""Renames through a view: the window's SQL, both code versions through it, re-runs and rollbacks."""

import pytest
from django.db import connection, migrations, models
from django.db.migrations.writer import MigrationWriter

from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import FinishRenameViaView, RenameColumnViaView, RenameFieldViaView
from safemigrate.pg import catalog, views, windows
from tests.rename_window import create_customers, drop_window, expected, orm_matrix, read_back, relation_kind, versions
from tests.utils import apply_operations, execute, unapply_operations


@pytest.fixture
def customers(table_name):
    state = create_customers(table_name)
    yield table_name, state
    drop_window(table_name)


def relfilenode(table):
    return execute("SELECT relfilenode FROM pg_class WHERE oid = to_regclass(%s)", [f'"{table}"'])[0][0]


def source_of(*operations):
    migration = type("Migration", (migrations.Migration,), {"operations": list(operations)})("0002_x", "shop")
    return MigrationWriter(migration).as_string()


def test_expand_opens_a_window_that_serves_both_versions_and_contract_closes_it(customers):
    table, state = customers
    node = relfilenode(table)
    expand = RenameFieldViaView("customer", "name", "full_name")
    new_state, _ = apply_operations([expand], state)
    base = views.base_name(table)
    assert relation_kind(table) == "v" and relation_kind(base) == "r"
    assert relfilenode(base) == node  # no row was rewritten
    window = catalog.rename_window(connection, table)
    assert window.base == base and window.aliases == [("name", "full_name")]
    assert catalog.column_exists(connection, table, "full_name")  # catalog look-ups see the base table
    assert not catalog.column_exists(connection, table, "name")
    assert catalog.primary_key_columns(connection, table) == ["id"]
    Old, New = versions(table)
    orm_matrix(Old, "name", "old")
    orm_matrix(New, "full_name", "new")
    # Each version reads what the other wrote.
    assert read_back(New, "full_name", "old") == expected("old")
    assert read_back(Old, "name", "new") == expected("new")
    assert Old.objects.get(code=5).name == New.objects.get(code=5).full_name == "c5"
    # Re-running the expand step finds the window open.
    apply_operations([expand], state)
    assert catalog.rename_window(connection, table).aliases == [("name", "full_name")]
    contract = FinishRenameViaView("customer", "name", "full_name")
    assert contract.stage == "contract"
    apply_operations([contract], new_state)
    assert relation_kind(table) == "r" and relation_kind(base) is None
    assert relfilenode(table) == node
    assert [c for (c,) in execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                                   "AND NOT attisdropped ORDER BY attnum", [f'"{table}"'])] == \
        ["id", "full_name", "code", "points"]
    orm_matrix(New, "full_name", "after")
    apply_operations([contract], new_state)  # re-run: nothing left to do
    # Rollbacks: each step reverses in one transaction.
    unapply_operations([contract], new_state)
    assert catalog.rename_window(connection, table).aliases == [("name", "full_name")]
    unapply_operations([expand], state)
    assert relation_kind(table) == "r" and relation_kind(base) is None
    assert catalog.column_exists(connection, table, "name") and not catalog.column_exists(connection, table, "full_name")
    assert relfilenode(table) == node
    text = source_of(expand, contract)
    assert "safemigrate.operations.RenameFieldViaView(" in text and "safemigrate.operations.FinishRenameViaView(" in text


def test_the_window_is_one_short_transaction_for_expand_and_for_contract(customers):
    table, state = customers
    _, sql = apply_operations([RenameFieldViaView("customer", "name", "full_name")], state, collect_sql=True)
    text = "\n".join(sql)
    assert text.count("-- safemigrate: in its own transaction") == 1
    assert f'ALTER TABLE "{table}" RENAME TO "{views.base_name(table)}"' in text
    assert 'RENAME COLUMN "name" TO "full_name"' in text
    assert '"full_name" AS "name"' in text and "security_invoker" in text


def test_defaults_identity_keys_and_returning_behave_as_on_the_table(customers):
    table, state = customers
    apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
    # Columns left out, or set to DEFAULT, take the base table's defaults (identity key included).
    rows = execute(f'INSERT INTO "{table}" (id, name, points) VALUES (DEFAULT, %s, DEFAULT), (DEFAULT, %s, 3) '
                   f'RETURNING id, points, full_name', ["x", "z"])
    assert rows == [(201, 0, "x"), (202, 3, "z")]
    rows = execute(f'INSERT INTO "{table}" (full_name) VALUES (%s) RETURNING id, points, name', ["y"])
    assert rows == [(203, 0, "y")]
    with pytest.raises(Exception, match="multiple assignments"):
        execute(f'UPDATE "{table}" SET name = %s, full_name = %s WHERE id = 1', ["a", "b"])


def test_grants_comments_owner_and_row_level_security_follow_the_table(customers):
    table, state = customers
    role = f"{table}_app"
    execute(f'CREATE ROLE "{role}"')
    try:
        execute(f'GRANT SELECT, INSERT ON "{table}" TO "{role}"')
        execute(f'GRANT UPDATE ("name") ON "{table}" TO "{role}"')
        execute(f'COMMENT ON COLUMN "{table}"."name" IS %s', ["the customer's name"])
        execute(f'COMMENT ON TABLE "{table}" IS %s', ["customers"])
        execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        execute(f'CREATE POLICY only_small ON "{table}" USING (code < 10)')
        apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
        grants = {(p,) for (p,) in execute(
            "SELECT privilege_type FROM information_schema.role_table_grants WHERE table_name = %s AND grantee = %s",
            [table, role])}
        assert grants == {("SELECT",), ("INSERT",)}
        column_grants = set(execute("SELECT column_name, privilege_type FROM information_schema.column_privileges "
                                    "WHERE table_name = %s AND grantee = %s", [table, role]))
        assert column_grants >= {("name", "UPDATE"), ("full_name", "UPDATE")}
        assert execute("SELECT col_description(to_regclass(%s), 2)", [f'"{views.base_name(table)}"']) == \
            [("the customer's name",)]
        view_comments = dict(execute("SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                                     "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0", [f'"{table}"']))
        assert view_comments["name"] == view_comments["full_name"] == "the customer's name"
        assert execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                       [f'"{views.base_name(table)}"']) == [("customers",)]
        # Row-level security is checked for the querying role, as on the table.
        execute(f'SET ROLE "{role}"')
        try:
            assert execute(f'SELECT count(*) FROM "{table}"') == [(9,)]
            assert execute(f'SELECT count(*) FROM "{table}" WHERE name = full_name') == [(9,)]
        finally:
            execute("RESET ROLE")
    finally:
        connection.close()
        execute(f'DROP OWNED BY "{role}"')
        execute(f'DROP ROLE "{role}"')


def test_a_second_rename_widens_the_window_and_each_contract_takes_one_name(customers):
    table, state = customers
    first = RenameFieldViaView("customer", "name", "full_name")
    second = RenameFieldViaView("customer", "points", "score")
    middle, _ = apply_operations([first], state)
    final, _ = apply_operations([second], middle)
    assert catalog.rename_window(connection, table).aliases == [("name", "full_name"), ("points", "score")]
    assert execute(f'SELECT name, full_name, points, score FROM "{table}" WHERE code = 3') == [("c3", "c3", 3, 3)]
    apply_operations([FinishRenameViaView("customer", "name", "full_name")], final)
    assert catalog.rename_window(connection, table).aliases == [("points", "score")]
    assert relation_kind(table) == "v"
    apply_operations([FinishRenameViaView("customer", "points", "score")], final)
    assert relation_kind(table) == "r"
    assert execute(f'SELECT full_name, score FROM "{table}" WHERE code = 3') == [("c3", 3)]


def test_a_rename_chain_across_releases_keeps_every_name_until_its_contract(customers):
    table, state = customers
    v2, _ = apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
    v3, _ = apply_operations([RenameFieldViaView("customer", "full_name", "display")], v2)
    assert catalog.rename_window(connection, table).aliases == [("name", "display"), ("full_name", "display")]
    assert execute(f'SELECT name, full_name, display FROM "{table}" WHERE code = 4') == [("c4", "c4", "c4")]
    unapply_operations([RenameFieldViaView("customer", "full_name", "display")], v2)
    assert catalog.rename_window(connection, table).aliases == [("name", "full_name")]
    v3, _ = apply_operations([RenameFieldViaView("customer", "full_name", "display")], v2)
    apply_operations([FinishRenameViaView("customer", "name", "full_name")], v2)
    apply_operations([FinishRenameViaView("customer", "full_name", "display")], v3)
    assert relation_kind(table) == "r"
    assert execute(f'SELECT display FROM "{table}" WHERE code = 4') == [("c4",)]


def test_a_db_column_change_uses_the_same_window(customers):
    table, state = customers
    field = models.CharField(max_length=50, db_index=True, db_column="label")
    expand = RenameColumnViaView("customer", "name", field)
    new_state, _ = apply_operations([expand], state)
    assert catalog.rename_window(connection, table).aliases == [("name", "label")]
    assert execute(f'SELECT name, label FROM "{table}" WHERE code = 2') == [("c2", "c2")]
    assert "safemigrate.operations.RenameColumnViaView(" in source_of(expand)
    apply_operations([FinishRenameViaView("customer", "name", "label")], new_state)
    assert relation_kind(table) == "r"
    unapply_operations([FinishRenameViaView("customer", "name", "label")], new_state)
    unapply_operations([expand], state)
    assert relation_kind(table) == "r" and catalog.column_exists(connection, table, "name")


def test_where_a_view_cannot_serve_the_rename_falls_back_to_the_copy(customers):
    table, state = customers
    execute(f'CREATE VIEW "{table}_report" AS SELECT code FROM "{table}"')
    try:
        expand = RenameFieldViaView("customer", "name", "full_name")
        with pytest.raises(UnsafeOperationError, match="views or rules depend on"):
            apply_operations([expand], state, atomic=True)
        assert relation_kind(table) == "r" and not catalog.column_exists(connection, table, "full_name")
        new_state, _ = apply_operations([expand], state)
        assert relation_kind(table) == "r"
        assert execute(f'SELECT count(*) FROM "{table}" WHERE full_name IS DISTINCT FROM name') == [(0,)]
        apply_operations([FinishRenameViaView("customer", "name", "full_name")], new_state)
    finally:
        execute(f'DROP VIEW IF EXISTS "{table}_report"')
    assert not catalog.column_exists(connection, table, "name")
    assert execute(f'SELECT full_name FROM "{table}" WHERE code = 7') == [("c7",)]


def test_a_db_column_change_refuses_where_a_view_cannot_serve(customers):
    table, state = customers
    execute(f'CREATE RULE keep AS ON DELETE TO "{table}" DO INSTEAD NOTHING')
    field = models.CharField(max_length=50, db_index=True, db_column="label")
    with pytest.raises(UnsafeOperationError, match="has rules"):
        apply_operations([RenameColumnViaView("customer", "name", field)], state)
    assert relation_kind(table) == "r" and catalog.column_exists(connection, table, "name")


def test_statements_that_would_strand_the_window_are_refused(customers):
    table, state = customers
    apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
    with pytest.raises(UnsafeOperationError, match="migrate_contract"):
        windows.execute_statement(connection, lambda s, p: execute(s, p), f'ALTER TABLE "{table}" RENAME TO "x"')
    with pytest.raises(UnsafeOperationError, match="drops the table"):
        windows.execute_statement(connection, lambda s, p: execute(s, p), f'DROP TABLE "{table}"')
    assert relation_kind(table) == "v"


def test_what_a_team_sees_during_the_window(customers):
    """The promises of docs/pages/renames.md's table, outside migrations and inside them."""
    table, state = customers
    apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
    base = views.base_name(table)
    with pytest.raises(Exception, match="is not a table"):
        execute(f'TRUNCATE "{table}"')
    with pytest.raises(Exception, match="cannot copy to view"):
        with connection.cursor() as cursor:
            with cursor.copy(f'COPY "{table}" (name, code) FROM STDIN') as copy:
                copy.write_row(("x", 99_999))
    with connection.cursor() as cursor:
        with cursor.copy(f'COPY (SELECT name, full_name FROM "{table}" WHERE code = 1) TO STDOUT') as copy:
            assert [bytes(row) for row in copy] == [b"c1\tc1\n"]
    with pytest.raises(Exception, match="not supported for views"):
        execute(f'ALTER TABLE "{table}" ADD COLUMN typed_by_hand integer')
    assert execute("SELECT pg_get_serial_sequence(%s, 'id')", [f'"{table}"']) == [(None,)]
    assert execute("SELECT pg_get_serial_sequence(%s, 'id')", [f'"{base}"'])[0][0] is not None
    # Inside a migration (safemigrate's statement path) the table's DDL goes to the base table.
    windows.execute_statement(connection, lambda s, p: execute(s, p), f'TRUNCATE "{table}"')
    assert execute(f'SELECT count(*) FROM "{base}"') == [(0,)]
    windows.execute_statement(connection, lambda s, p: execute(s, p),
                              f'ALTER TABLE "{table}" ADD COLUMN added integer DEFAULT 3')
    assert execute(f'INSERT INTO "{table}" (name, code) VALUES (%s, 1) RETURNING added, full_name', ["y"]) == \
        [(3, "y")]
    assert catalog.rename_window(connection, table).aliases == [("name", "full_name")]


def test_foreign_keys_to_the_table_keep_working_and_new_ones_point_at_the_base_table(customers):
    table, state = customers
    execute(f'CREATE TABLE "{table}_order" (id bigint PRIMARY KEY, customer_id bigint REFERENCES "{table}" (id) '
            f'ON DELETE CASCADE)')
    execute(f'CREATE TABLE "{table}_note" (id bigint PRIMARY KEY, customer_id bigint)')
    try:
        apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
        execute(f'INSERT INTO "{table}_order" VALUES (1, 7)')
        with pytest.raises(Exception, match="foreign key"):
            execute(f'INSERT INTO "{table}_order" VALUES (2, 999999)')
        execute(f'DELETE FROM "{table}" WHERE id = 7')  # through the view: the cascade fires on the base table
        assert execute(f'SELECT count(*) FROM "{table}_order"') == [(0,)]
        # A foreign key added during the window (a new model pointing at this one) targets the base table.
        windows.execute_statement(connection, lambda s, p: execute(s, p),
                                  f'ALTER TABLE "{table}_note" ADD CONSTRAINT note_fk FOREIGN KEY (customer_id) '
                                  f'REFERENCES "{table}" (id) NOT VALID')
        assert execute("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'note_fk'") == \
            [(views.base_name(table),)]
        apply_operations([FinishRenameViaView("customer", "name", "full_name")], state)
        assert execute("SELECT confrelid::regclass::text FROM pg_constraint WHERE conname = 'note_fk'") == [(table,)]
    finally:
        execute(f'DROP TABLE IF EXISTS "{table}_order", "{table}_note"')


def test_the_rename_strategy_setting_is_checked():
    from django.test import override_settings

    from safemigrate.checks import check_settings

    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "fast"}):
        errors = check_settings()
    assert any("RENAME_STRATEGY" in error.msg and "'view' or 'copy'" in error.msg for error in errors), errors
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        assert check_settings() == []


def test_plan_annotation_marks_declared_and_undeclared_statements_on_a_window(customers, tmp_path):
    """``migrate --plan --annotate`` reads safemigrate's statements from their declaration (``DeclaredSQL``)
    and the rest from their text; either kind that touches a window's table is shown on the base table."""
    from django.db.migrations.loader import MigrationLoader

    from safemigrate.pg.execution import annotate_plan
    from tests.utils import temporary_migration_modules

    table, state = customers
    apply_operations([RenameFieldViaView("customer", "name", "full_name")], state)
    header = "from django.db import migrations, models\nimport safemigrate.operations\n"
    files = {
        "0001_initial.py": header + f"""
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.SeparateDatabaseAndState(state_operations=[migrations.CreateModel("Customer", [
        ("id", models.BigAutoField(primary_key=True)),
        ("full_name", models.CharField(max_length=50, db_index=True)),
        ("code", models.IntegerField(unique=True, null=True)),
        ("points", models.IntegerField(default=0, db_default=0)),
    ], options={{"db_table": "{table}"}})])]
""",
        "0002_more.py": header + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [safemigrate.operations.AddColumnNullable("customer", "note", models.TextField(null=True)),
                  migrations.AddField("customer", "extra", models.IntegerField(null=True))]
""",
    }
    with temporary_migration_modules(tmp_path, {"billing": files}):
        loader = MigrationLoader(connection)
        lines = annotate_plan(loader, [(loader.get_migration("billing", "0002_more"), False)])
    on_base = f"[rename window open on {table}: runs on the base table; the view is re-created in the same transaction]"
    (declared,) = [line for line in lines if 'ADD COLUMN IF NOT EXISTS "note"' in line]
    (plain,) = [line for line in lines if 'ADD COLUMN "extra"' in line]
    assert on_base in declared and on_base in plain
    assert "[ACCESS EXCLUSIVE (instant; reads and writes queue while it waits); bounded]" in declared
