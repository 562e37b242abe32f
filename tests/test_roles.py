"""Two roles, no superuser, an application schema (docs/pages/roles.md).

The migration role ``app_owner`` owns the tables and runs every operation; the
application role ``app_user`` has only the grants of the roles page and writes
through every window. ``public`` comes after ``app`` on the path and holds decoys:
tables, indexes and functions named like the application's.
"""

import threading
import time
import uuid

import psycopg
import pytest
from django.db import connection, connections, migrations, models
from django.db.utils import load_backend
from django.db.migrations.state import ModelState, ProjectState

from safemigrate.exceptions import LockTimeoutExhausted, MissingPrivilegeError
from safemigrate.operations import (
    AddColumnNullable,
    Backfill,
    ChangeTypeViaCopy,
    CreateIndexConcurrently,
    DropCompatibilityView,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RenameModelWithView,
    RenameViaCopy,
)
from safemigrate.pg import backfill, catalog, privileges, runlock
from safemigrate.pg.ddl import run_ddl
from safemigrate.pg.reporting import Report, collecting
from testproject.profiles import APP_ROLE, OWNER, SCHEMA, ProfileDatabase, grants_sql, passwords
from tests.utils import apply_operations, execute, run_command, temporary_migration_modules

TABLE = "shop_customer"


def customer_state(name_field=None, table=TABLE):
    state = ProjectState()
    state.add_model(ModelState(
        "shop", "Customer",
        [("id", models.BigAutoField(primary_key=True)),
         ("name", name_field or models.CharField(max_length=50)),
         ("points", models.IntegerField(default=0))],
        options={"db_table": table},
    ))
    return state


@pytest.fixture
def customers(profile_db):
    """``shop_customer`` in ``app``, created and filled by the owner, and its decoy in ``public``."""
    state = customer_state()
    apply_operations([migrations.CreateModel(
        "Customer", list(state.models["shop", "customer"].fields.items()), options={"db_table": TABLE})],
        atomic=True)
    execute(f'INSERT INTO "{TABLE}" (name, points) SELECT \'c\' || i, i FROM generate_series(1, 500) i')
    profile_db.add_decoy(TABLE)
    return profile_db, state


def app_writes(database, sql, params=()):
    """One statement as the application role (its own connection, as a web process has)."""
    with database.connect("app") as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


# -- the grants page ------------------------------------------------------------------------


def test_the_grants_page_sets_up_two_plain_roles_and_an_app_schema(profile_db):
    with profile_db.connect("admin") as admin:
        roles = dict(admin.execute(
            "SELECT rolname, rolsuper OR rolcreatedb OR rolcreaterole OR rolbypassrls OR rolreplication "
            "FROM pg_roles WHERE rolname = ANY(%s)", [[OWNER, APP_ROLE]]).fetchall())
        assert roles == {OWNER: False, APP_ROLE: False}
        assert admin.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                             "WHERE r.rolname = ANY(%s)", [[OWNER, APP_ROLE]]).fetchone()[0] == 0
        assert admin.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s",
                             [SCHEMA]).fetchone()[0] == OWNER
    assert execute("SELECT current_user, current_schema()") == [(OWNER, SCHEMA)]
    execute("CREATE TABLE made_later (id bigserial PRIMARY KEY, v int)")
    execute("CREATE VIEW made_later_view AS SELECT * FROM made_later")
    # Default privileges: whatever the owner creates later, the app may use (and only use).
    assert app_writes(profile_db, "INSERT INTO made_later (v) VALUES (1) RETURNING id") == [(1,)]
    assert app_writes(profile_db, "INSERT INTO made_later_view (v) VALUES (2) RETURNING v") == [(2,)]
    assert app_writes(profile_db, "SELECT current_schema()") == [(SCHEMA,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_writes(profile_db, "CREATE TABLE app_made (id int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_writes(profile_db, "ALTER TABLE made_later ADD COLUMN w int")


def test_the_optional_grants_are_valid_sql():
    """Rolled back: the roles are shared by every test on this server."""
    with ProfileDatabase() as database, database.connect("admin", autocommit=False) as admin:
        admin.execute(grants_sql("optional"))
        assert admin.execute("SELECT pg_has_role(%s, 'pg_read_all_stats', 'MEMBER')", [OWNER]).fetchone()[0]
        admin.rollback()


def test_passwords_come_from_the_page():
    assert set(passwords()) == {OWNER, APP_ROLE}


# -- every window, as the application role ---------------------------------------------------


def test_rename_and_type_change_windows_serve_the_app_role(customers):
    database, state = customers
    rename = RenameViaCopy("customer", "name", "full_name")
    renamed, _ = apply_operations([rename], state)
    # Trigger functions and pgtrigger's helper live in the app schema, and the app role may call them.
    functions = execute("SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                        "WHERE p.proname LIKE 'safemigrate%%' OR p.proname = '_pgtrigger_should_ignore'")
    assert functions and {schema for schema, _ in functions} == {SCHEMA}
    app_writes(database, f'INSERT INTO "{TABLE}" (name, points) VALUES (%s, 1)', ["old-code"])
    app_writes(database, f'INSERT INTO "{TABLE}" (full_name, points) VALUES (%s, 1)', ["new-code"])
    app_writes(database, f'UPDATE "{TABLE}" SET name = %s WHERE id = 1', ["old-update"])
    assert execute(f'SELECT full_name FROM "{TABLE}" WHERE id = 1') == [("old-update",)]
    assert execute(f'SELECT count(*) FROM "{TABLE}" WHERE full_name IS DISTINCT FROM name') == [(0,)]
    retype = ChangeTypeViaCopy("customer", "points", models.BigIntegerField(default=0))
    retyped, _ = apply_operations([retype], renamed)
    app_writes(database, f'INSERT INTO "{TABLE}" (full_name, points) VALUES (%s, 7)', ["during-type"])
    apply_operations([FinishRenameViaCopy("customer", "name", "full_name"),
                      FinishChangeTypeViaCopy("customer", "points", models.BigIntegerField(default=0))], retyped)
    app_writes(database, f'INSERT INTO "{TABLE}" (full_name, points) VALUES (%s, 8)', ["after"])
    assert execute(f'SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() '
                   f"AND table_name = %s AND column_name = 'points'", [TABLE]) == [("bigint",)]
    # The decoy in public was never touched.
    with database.connect("admin") as admin:
        assert admin.execute(f'SELECT count(*) FROM public."{TABLE}"').fetchone()[0] == 3
        assert [c for (c,) in admin.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = %s ORDER BY 1", [TABLE]).fetchall()] == ["id", "name", "points"]


def test_backfill_progress_table_and_new_columns_under_two_roles(customers):
    database, state = customers
    added, _ = apply_operations([
        AddColumnNullable("customer", "tier", models.CharField(max_length=5, default="basic")),
        Backfill("customer", set={"points": '"points" + 1'}, name="bump"),
    ], state)
    assert execute("SELECT n.nspname, pg_get_userbyid(c.relowner) FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s",
                   [backfill.PROGRESS_TABLE]) == [(SCHEMA, OWNER)]
    app_writes(database, f'INSERT INTO "{TABLE}" (name, points) VALUES (%s, 1)', ["old-code"])
    assert app_writes(database, f"SELECT tier FROM \"{TABLE}\" WHERE name = 'old-code'") == [("basic",)]


def test_renamed_model_view_serves_the_app_role(customers):
    database, state = customers
    target = state.clone()
    target.rename_model("shop", "Customer", "Client")
    target.alter_model_options("shop", "client", {"db_table": "shop_client"})
    with connection.schema_editor(atomic=False) as editor:
        RenameModelWithView("Customer", "Client").database_forwards("shop", editor, state, target)
    assert app_writes(database, f'INSERT INTO "{TABLE}" (name, points) VALUES (%s, 1) RETURNING id', ["via-view"])
    app_writes(database, f"UPDATE \"{TABLE}\" SET points = 9 WHERE name = 'via-view'")
    assert app_writes(database, "SELECT points FROM shop_client WHERE name = 'via-view'") == [(9,)]
    with connection.schema_editor(atomic=False) as editor:
        DropCompatibilityView(TABLE, "shop_client").database_forwards("shop", editor, target, target)
    assert app_writes(database, "SELECT count(*) FROM shop_client") == [(501,)]


def test_a_same_named_index_in_a_later_schema_does_not_count_as_built(customers):
    database, state = customers
    index = models.Index(fields=["points"], name="customer_points_idx")
    database.add_decoy_index(TABLE, "customer_points_idx", ["points"])
    assert catalog.index_state(connection, "customer_points_idx") is None
    apply_operations([CreateIndexConcurrently("customer", index)], state)
    assert execute("SELECT schemaname FROM pg_indexes WHERE indexname = 'customer_points_idx' ORDER BY 1") == [
        (SCHEMA,), ("public",)]
    assert catalog.index_state(connection, "customer_points_idx")["valid"]


# -- what needs more than the page's grants says so once ---------------------------------------


def test_lock_holders_hidden_from_the_owner_are_named_by_pid_with_the_grant_that_shows_them(customers):
    database, _ = customers
    lines = []
    with database.connect("app", autocommit=False) as blocker:
        blocker.execute(f'SELECT count(*) FROM "{TABLE}"')
        pid = blocker.info.backend_pid
        with collecting(Report(echo=lines.append)), connection.schema_editor(atomic=False) as editor:
            for _ in range(2):
                with pytest.raises(LockTimeoutExhausted) as error:
                    run_ddl(editor, [f'ALTER TABLE "{TABLE}" ADD COLUMN blocked int'], table=TABLE,
                            lock_timeout_ms=50, retries=1, sleep=lambda s: None)
        blocker.rollback()
    assert f"pid {pid} (AccessShareLock; its state and query are hidden" in str(error.value)
    assert "<insufficient privilege>" not in str(error.value)
    notices = [line for line in lines if "pg_read_all_stats" in line]
    assert len(notices) == 1 and f"GRANT pg_read_all_stats TO {OWNER}" in notices[0]


def test_an_earlier_run_of_another_role_is_reported_once_as_invisible(customers):
    database, _ = customers
    lines = []
    tag = runlock.run_tag("migrate", "deadbeef0001")
    with database.connect("app") as other:
        other.execute("SELECT set_config('application_name', %s, false)", [tag])
        with collecting(Report(echo=lines.append)):
            assert runlock.settle_orphans(connection, "mine00000001", mode="cancel", wait_s=1) == []
            runlock.settle_orphans(connection, "mine00000001", mode="cancel", wait_s=1)
    notices = [line for line in lines if "cannot see whether they are still executing" in line]
    assert len(notices) == 1 and f"GRANT pg_read_all_stats TO {OWNER}" in notices[0]


def test_cancelling_another_roles_statement_names_pg_signal_backend(customers):
    """A role that sees the orphan (pg_read_all_stats) but may not cancel it (no pg_signal_backend)."""
    database, _ = customers
    seer = f"sm_seer_{uuid.uuid4().hex[:8]}"
    execute_admin(f"CREATE ROLE {seer} LOGIN; GRANT pg_read_all_stats TO {seer}")
    alias = f"seer_{seer}"
    # A connection object made on the fly (Django's test cases refuse configured aliases they were not told of).
    entry = {**connections.settings["default"], **database.settings("owner"), "USER": seer, "PASSWORD": ""}
    connections[alias] = load_backend(entry["ENGINE"]).DatabaseWrapper(entry, alias)
    tag = runlock.run_tag("migrate", "deadbeef0002")
    lines = []
    try:
        with database.connect("app") as other:  # the app role's "earlier run", still executing
            other.execute("SELECT set_config('application_name', %s, false)", [tag])
            worker = threading.Thread(target=lambda: other.execute("SELECT pg_sleep(2)"), daemon=True)
            worker.start()
            time.sleep(0.3)
            with collecting(Report(echo=lines.append)), pytest.raises(runlock.OrphanedWorkError):
                runlock.settle_orphans(connections[alias], "mine00000002", mode="cancel", wait_s=0.5,
                                       echo=lines.append)
            worker.join()
    finally:
        connections[alias].close()
        del connections[alias]
        execute_admin(f"DROP ROLE {seer}")
    assert any(f"GRANT pg_signal_backend TO {seer}" in line for line in lines), lines


def execute_admin(sql):
    from testproject.pgserver import database_url

    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(sql)


# -- missing grants: one message, before anything changes ---------------------------------------

HEADER = "from django.db import migrations, models\nimport safemigrate.operations\n"
INITIAL = HEADER + """
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Customer", [
        ("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=50)),
    ], options={"db_table": "shop_customer"})]
"""


def _second(operation):
    return HEADER + f"""
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0001_initial")]
    operations = [{operation}]
"""


def _migrations_state():
    return {name: (columns, indexes) for name, columns, indexes in execute(
        "SELECT c.relname, (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), "
        "(SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) FROM pg_class c "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'")}


def test_a_table_owned_by_another_role_stops_migrate_before_anything_changes(profile_db, tmp_path):
    second = _second('safemigrate.operations.CreateIndexConcurrently("customer", '
                     'models.Index(fields=["name"], name="customer_name_idx")), '
                     'safemigrate.operations.AddColumnNullable("customer", "note", models.TextField(null=True))')
    with temporary_migration_modules(tmp_path, {"shop": {"0001_initial.py": INITIAL, "0002_more.py": second}}):
        run_command("migrate", "shop", "0001", verbosity=0)
        with profile_db.connect("admin") as admin:
            admin.execute(f"ALTER TABLE {SCHEMA}.shop_customer OWNER TO postgres")
        before = _migrations_state()
        with pytest.raises(MissingPrivilegeError) as error:
            run_command("migrate", "shop", verbosity=0)
        assert _migrations_state() == before
        assert execute("SELECT name FROM django_migrations WHERE app = 'shop'") == [("0001_initial",)]
        message = str(error.value)
        assert message.count("\n  - ") == 1, message
        assert f"missing ownership of table {SCHEMA}.shop_customer" in message
        assert "owned by postgres" in message and "shop.0002_more" in message
        assert f"ALTER TABLE {SCHEMA}.shop_customer OWNER TO {OWNER}" in message
        assert "before changing anything" in message
        # Given back, the same command goes through.
        with profile_db.connect("admin") as admin:
            admin.execute(f"ALTER TABLE {SCHEMA}.shop_customer OWNER TO {OWNER}")
        run_command("migrate", "shop", verbosity=0)
        assert catalog.index_state(connection, "customer_name_idx")["valid"]


def test_pgtriggers_helper_in_public_is_named_before_a_rename_starts(profile_db, tmp_path, settings):
    settings.PGTRIGGER_SCHEMA = "public"
    second = _second('safemigrate.operations.RenameViaCopy("customer", "name", "full_name")')
    with temporary_migration_modules(tmp_path, {"shop": {"0001_initial.py": INITIAL, "0002_rename.py": second}}):
        run_command("migrate", "shop", "0001", verbosity=0)
        before = _migrations_state()
        with pytest.raises(MissingPrivilegeError) as error:
            run_command("migrate", "shop", verbosity=0)
        assert _migrations_state() == before
        message = str(error.value)
        assert "missing CREATE on schema public" in message and "PGTRIGGER_SCHEMA" in message, message
        settings.PGTRIGGER_SCHEMA = SCHEMA
        run_command("migrate", "shop", verbosity=0)
        assert catalog.column_info(connection, "shop_customer", "full_name") is not None


def test_the_docs_example_of_the_message_is_the_real_one(profile_db, tmp_path):
    """docs/pages/roles.md quotes the message: its wording must be what the check says."""
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "pages" / "roles.md").read_text()
    second = _second('safemigrate.operations.CreateIndexConcurrently("customer", '
                     'models.Index(fields=["name"], name="customer_name_idx"))')
    with temporary_migration_modules(tmp_path, {"shop": {"0001_initial.py": INITIAL, "0002_index.py": second}}):
        run_command("migrate", "shop", "0001", verbosity=0)
        with profile_db.connect("admin") as admin:
            admin.execute(f"ALTER TABLE {SCHEMA}.shop_customer OWNER TO postgres")
        with pytest.raises(MissingPrivilegeError) as error:
            run_command("migrate", "shop", verbosity=0)
    example = page.split("```text\n", 1)[1].split("```", 1)[0]
    assert " ".join(example.split()) == " ".join(f"{type(error.value).__module__}.MissingPrivilegeError: "
                                                 f"{error.value}".split())


# -- the archive schema: made by the administrator, checked before a contract archives ------------

ARCHIVING_INITIAL = HEADER + """
class Migration(migrations.Migration):
    initial = True
    operations = [migrations.CreateModel("Customer", [
        ("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=50)),
        ("legacy", models.TextField(null=True)),
    ], options={"db_table": "shop_customer"})]
"""
ARCHIVING_CONTRACT = HEADER + """
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("shop", "0001_initial")]
    operations = [
        safemigrate.operations.RemoveFieldSafely("customer", "legacy"),
        safemigrate.operations.DropColumn("customer", "legacy", field=models.TextField(null=True)),
    ]
"""


def _columns(table):
    """Columns of ``table`` as the search_path resolves it."""
    return {name for (name,) in execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                                        "AND attnum > 0 AND NOT attisdropped", [table])}


def test_the_grants_pages_archive_schema_is_the_default_archive_schema():
    """The page's database block makes the schema ARCHIVE_SCHEMA names by default (else the check fires)."""
    from safemigrate.conf import DEFAULTS
    from testproject.profiles import page_schemas

    assert page_schemas() == [SCHEMA, DEFAULTS["ARCHIVE_SCHEMA"]]
    assert f"CREATE SCHEMA {DEFAULTS['ARCHIVE_SCHEMA']} AUTHORIZATION {OWNER};" in grants_sql("database")


def test_a_missing_archive_schema_stops_the_contract_before_anything_changes(profile_db, tmp_path):
    """Without CREATE on the database, the archive schema must exist: named before the contract starts.

    With it (as the grants page makes it), the same contract archives the column.
    """
    from safemigrate.pg import archive_store

    archive_schema = archive_store.schema_name()
    assert execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s",
                   [archive_schema]) == [(OWNER,)]  # the page's block made it
    with profile_db.connect("admin") as admin:
        admin.execute(f'DROP SCHEMA "{archive_schema}"')
        assert not admin.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')",
                                 [OWNER]).fetchone()[0]
    modules = {"shop": {"0001_initial.py": ARCHIVING_INITIAL, "0002_drop_legacy.py": ARCHIVING_CONTRACT}}
    with temporary_migration_modules(tmp_path, modules):
        run_command("migrate", "shop", verbosity=0)
        execute("INSERT INTO shop_customer (name, legacy) VALUES ('a', 'kept'), ('b', NULL)")
        before = _migrations_state()
        with pytest.raises(MissingPrivilegeError) as error:
            run_command("migrate_contract", "shop", verbosity=0)
        message = str(error.value)
        assert message.startswith("migrate_contract stopped before changing anything"), message
        assert message.count("\n  - ") == 1, message
        assert f"missing a schema on schema {archive_schema}" in message, message
        assert "shop.0002_drop_legacy" in message and "ARCHIVE_SCHEMA" in message
        assert f"Fix: CREATE SCHEMA {archive_schema} AUTHORIZATION {OWNER};" in message
        assert _migrations_state() == before
        assert "legacy" in _columns("shop_customer")
        assert execute("SELECT name FROM django_migrations WHERE app = 'shop'") == [("0001_initial",)]
        # Reached another way (a shell, a test), the archive's own set-up says the same.
        with pytest.raises(MissingPrivilegeError) as direct:
            archive_store.ensure(connection)
        assert f"Fix: CREATE SCHEMA {archive_schema} AUTHORIZATION {OWNER};" in str(direct.value)
        # The fix, as the message and the grants page give it; then the contract archives.
        with profile_db.connect("admin") as admin:
            admin.execute(f"CREATE SCHEMA {archive_schema} AUTHORIZATION {OWNER}")
        run_command("migrate_contract", "shop", verbosity=0)
    (archive,) = archive_store.select(connection)
    assert (archive.table_name, archive.column_name, archive.table_schema) == ("shop_customer", "legacy", SCHEMA)
    assert archive.archive_name in _columns("shop_customer")
    assert execute(f'SELECT name, "{archive.archive_name}" FROM shop_customer ORDER BY name') == [
        ("a", "kept"), ("b", None)]


def test_no_create_on_an_existing_archive_schema_is_named_before_the_contract(profile_db, tmp_path):
    """An archive schema owned by someone else, without CREATE for the migration role: the GRANT that fixes it."""
    from safemigrate.pg import archive_store

    archive_schema = archive_store.schema_name()
    with profile_db.connect("admin") as admin:
        admin.execute(f'ALTER SCHEMA "{archive_schema}" OWNER TO postgres')
    modules = {"shop": {"0001_initial.py": ARCHIVING_INITIAL, "0002_drop_legacy.py": ARCHIVING_CONTRACT}}
    with temporary_migration_modules(tmp_path, modules):
        run_command("migrate", "shop", verbosity=0)
        with pytest.raises(MissingPrivilegeError) as error:
            run_command("migrate_contract", "shop", verbosity=0)
        assert f"GRANT USAGE, CREATE ON SCHEMA {archive_schema} TO {OWNER};" in str(error.value)
        assert "legacy" in _columns("shop_customer")
        with profile_db.connect("admin") as admin:
            admin.execute(f"GRANT USAGE, CREATE ON SCHEMA {archive_schema} TO {OWNER}")
        run_command("migrate_contract", "shop", verbosity=0)
    assert [a.column_name for a in archive_store.select(connection)] == ["legacy"]


def test_archive_off_needs_no_archive_schema(profile_db, tmp_path, settings):
    from safemigrate.pg import archive_store

    settings.SAFEMIGRATE = {"ARCHIVE": {"default": False}}
    with profile_db.connect("admin") as admin:
        admin.execute(f'DROP SCHEMA "{archive_store.schema_name()}"')
    modules = {"shop": {"0001_initial.py": ARCHIVING_INITIAL, "0002_drop_legacy.py": ARCHIVING_CONTRACT}}
    with temporary_migration_modules(tmp_path, modules):
        run_command("migrate", "shop", verbosity=0)
        run_command("migrate_contract", "shop", verbosity=0)
    assert "legacy" not in _columns("shop_customer")
