"""``manage.py archive``: JSON shapes (docs/pages/archive.md), purge, bad input, the two-role setup."""

import json
import re
from pathlib import Path

import pytest
from django.core.management.base import CommandError
from django.db import connection, models
from django.test import override_settings

from safemigrate.operations import DropColumn, DropTable
from safemigrate.pg import archive_store as store
from safemigrate.pg.archive import finish_pending
from tests.test_archive import empty_archive  # noqa: F401  (autouse: no archives left by other tests)
from tests.test_archive import archives, columns, model_state, removal_table, values
from tests.utils import apply_operations, execute, run_command, unapply_operations

pytestmark = pytest.mark.django_db(transaction=True)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "pages" / "archive.md"


def documented_schema(name):
    block = next(b for b in re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S) if '"$schema"' in b)
    schema = json.loads(block)
    return {**schema, "$ref": f"#/$defs/{name}"}


def output(*args):
    out, _ = run_command("archive", *args, "--json")
    return json.loads(out)


def archived_column(table_name):
    state = removal_table(table_name)
    drop = DropColumn("item", "legacy", field=models.IntegerField(default=5))
    apply_operations([drop], state)
    (archive,) = finish_pending(connection)
    return archive, drop, state


def test_json_output_follows_the_schema_in_the_docs(table_name):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator
    validator.check_schema(documented_schema("list"))
    archive, drop, state = archived_column(table_name)
    execute(f'CREATE TABLE "{table_name}_gone" (id bigserial PRIMARY KEY, v int)')
    apply_operations([DropTable(f"{table_name}_gone")], state)  # pending: no checksum yet
    listing = output("list")
    jsonschema.validate(listing, documented_schema("list"), cls=validator)
    assert [a["id"] for a in listing] == [archive.id, archive.id + 1] and all("id" in a for a in listing)
    assert listing[0]["location"] == f"{table_name}.{archive.archive_name}" and listing[0]["bytes"] > 0
    assert listing[1]["state"] == "pending" and listing[1]["rows"] is None
    shown = output("show", str(archive.id))
    jsonschema.validate(shown, documented_schema("show"), cls=validator)
    assert "ADD COLUMN" in shown["ddl"] and shown["definition"]["type"] == "integer"
    unapply_operations([drop], state)
    restored = output("restore", str(archive.id))
    jsonschema.validate(restored, documented_schema("restore"), cls=validator)
    purged = output("purge", str(archive.id + 1))
    jsonschema.validate(purged, documented_schema("purge"), cls=validator)
    assert purged[0]["action"] == "purged"
    # A schema that accepts anything would prove nothing.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([dict(listing[0], state="lost")], documented_schema("list"), cls=validator)
    listing = output("list", "--all")
    assert [a["state"] for a in listing] == ["restored", "purged"]
    assert output("list") == []


def test_list_text_shows_size_and_location(table_name):
    archive, _, _ = archived_column(table_name)
    out, _ = run_command("archive", "list")
    assert f"{table_name}.legacy" in out and archive.archive_name in out and "1 archive(s) kept" in out
    assert re.search(r"\d+(\.\d)? (B|kB) in all", out)
    out, _ = run_command("archive", "show", str(archive.id))
    assert "DDL to re-create it:" in out and "CREATE INDEX" in out


def test_purge_by_id_by_age_and_dry_run(table_name):
    archive, _, _ = archived_column(table_name)
    assert output("purge", "--older-than", "1d") == []  # too young
    assert output("purge") == []  # ARCHIVE_KEEP_DAYS (30)
    (would,) = output("purge", "--older-than", "0m", "--dry-run")
    assert would["action"] == "would purge" and archive.archive_name in columns(table_name)
    (done,) = output("purge", "--older-than", "0m")
    assert done["action"] == "purged" and archive.archive_name not in columns(table_name)
    assert output("purge", str(archive.id))[0]["action"] == "already purged"
    with pytest.raises(CommandError, match="has been purged|was purged"):
        run_command("archive", "restore", str(archive.id))
    with override_settings(SAFEMIGRATE={"ARCHIVE_KEEP_DAYS": None}):
        with pytest.raises(CommandError, match="ARCHIVE_KEEP_DAYS is None"):
            run_command("archive", "purge")
    with pytest.raises(CommandError, match="--older-than 'soon'"):
        run_command("archive", "purge", "--older-than", "soon")


def test_purge_of_a_table_archive_drops_it(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int)')
    apply_operations([DropTable(table_name)], model_state(table_name))
    (archive,) = finish_pending(connection)
    archived = store.qualified(connection, archive.archive_name)
    output("purge", str(archive.id))
    assert execute("SELECT to_regclass(%s)", [archived]) == [(None,)]


# -- bad input: a clear error, nothing changed ------------------------------------------------


def test_unknown_ids_are_refused(table_name):
    archive, _, _ = archived_column(table_name)
    for action in ("purge", "restore", "show"):
        with pytest.raises(CommandError, match=f"No archive with id 999 \\(known ids: {archive.id}\\)"):
            run_command("archive", action, "999")
    with pytest.raises(CommandError, match="No archive with id 999"):
        run_command("archive", "purge", str(archive.id), "999")  # all ids are checked before anything goes
    assert archive.archive_name in columns(table_name)
    assert archives(table_name=table_name)[0].state == "archived"


def test_restoring_over_an_existing_column_is_refused(table_name):
    archive, drop, state = archived_column(table_name)
    execute("INSERT INTO django_migrations (app, name, applied) VALUES ('shop', 'manual', now())")
    try:
        # A later release adds a new field of the same name.
        execute(f'ALTER TABLE "{table_name}" ADD COLUMN legacy int')
        execute(f'UPDATE "{table_name}" SET legacy = -1')
        with pytest.raises(CommandError, match="restoring over an existing column"):
            run_command("archive", "restore", str(archive.id))
        assert set(values(table_name, "legacy").values()) == {-1}
        execute(f'ALTER TABLE "{table_name}" DROP COLUMN legacy')
        with pytest.raises(CommandError, match="reverse shop.manual first"):
            run_command("archive", "restore", str(archive.id))
    finally:
        execute("DELETE FROM django_migrations WHERE app = 'shop' AND name = 'manual'")
    assert archives(table_name=table_name)[0].state == "archived"


def test_a_restore_whose_manifest_no_longer_matches_is_refused(table_name):
    archive, drop, state = archived_column(table_name)
    unapply_operations([drop], state)
    execute(f'ALTER TABLE "{table_name}" ALTER COLUMN "{archive.archive_name}" TYPE bigint')
    with pytest.raises(CommandError, match="manifest no longer matches.*is bigint, the manifest recorded integer"):
        run_command("archive", "restore", str(archive.id))
    execute(f'ALTER TABLE "{table_name}" ALTER COLUMN "{archive.archive_name}" TYPE integer')
    # Values changed by hand: the checksum says so; --allow-changed restores what is there.
    execute(f'UPDATE "{table_name}" SET "{archive.archive_name}" = 0 WHERE id = 1')
    with pytest.raises(CommandError, match="no longer has the recorded checksum"):
        run_command("archive", "restore", str(archive.id))
    assert set(values(table_name, "legacy").values()) == {None}
    (result,) = output("restore", str(archive.id), "--allow-changed")
    assert result["checksum_ok"] is False and values(table_name, "legacy")[1] == 0


def test_restore_before_the_reverse_of_a_type_change_or_column_says_what_to_do(table_name):
    archive, _, _ = archived_column(table_name)
    execute("INSERT INTO django_migrations (app, name, applied) VALUES ('shop', 'manual', now())")
    try:
        with pytest.raises(CommandError, match=r"reverse shop.manual first \(python manage.py migrate shop"):
            run_command("archive", "restore", str(archive.id))
    finally:
        execute("DELETE FROM django_migrations WHERE app = 'shop' AND name = 'manual'")


# -- the two-role setup: a migration role owning the tables, an application role with DML only


@pytest.fixture
def roles(table_name):
    suffix = table_name[-6:]
    owner, app = f"sm_owner_{suffix}", f"sm_app_{suffix}"
    execute(f"CREATE ROLE {owner} NOLOGIN")
    execute(f"CREATE ROLE {app} NOLOGIN")
    execute(f"GRANT CREATE ON DATABASE {connection.settings_dict['NAME']} TO {owner}")
    execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {owner}")
    # Created by the migration role on first use, as in a real two-role project.
    execute("DROP TABLE IF EXISTS safemigrate_backfill_progress")
    yield owner, app
    execute("RESET ROLE")
    execute(f'DROP TABLE IF EXISTS "{table_name}" CASCADE')
    execute(f"DROP SCHEMA IF EXISTS {store.schema_name()} CASCADE")
    execute("DROP TABLE IF EXISTS safemigrate_backfill_progress")
    for role in (owner, app):
        execute(f"DROP OWNED BY {role}")
        execute(f"DROP ROLE {role}")


def test_two_roles_archive_and_restore_keep_the_application_roles_grants(table_name, roles):
    owner, app = roles
    execute(f"DROP SCHEMA IF EXISTS {store.schema_name()} CASCADE")  # created below by the owner role
    execute(f"SET ROLE {owner}")
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int, legacy int)')
    execute(f'INSERT INTO "{table_name}" (v, legacy) SELECT i, i FROM generate_series(1, 100) i')
    execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}" TO {app}')
    execute(f'GRANT USAGE ON SEQUENCE "{table_name}_id_seq" TO {app}')
    state = model_state(table_name, ("v", models.IntegerField()))
    apply_operations([DropColumn("item", "legacy", field=models.IntegerField())], state)
    finish_pending(connection)
    assert execute(f"SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
                   [store.schema_name()]) == [(owner,)]
    execute(f"SET ROLE {app}")
    execute(f'INSERT INTO "{table_name}" (v) VALUES (1)')
    execute(f'UPDATE "{table_name}" SET v = 2 WHERE id = 1')
    with pytest.raises(Exception, match="permission denied"):
        execute(f"SELECT count(*) FROM {store.manifest_table(connection)}")
    execute("RESET ROLE")
    execute(f"SET ROLE {owner}")
    apply_operations([DropTable(table_name)], state)
    (archive,) = [a for a in finish_pending(connection) if a.kind == "table"]
    run_command("archive", "restore", str(archive.id))  # as the migration role
    execute("RESET ROLE")
    execute(f"SET ROLE {app}")
    execute(f'INSERT INTO "{table_name}" (v) VALUES (3)')
    assert execute(f'SELECT count(*) FROM "{table_name}"') == [(102,)]
    execute("RESET ROLE")


@pytest.mark.parametrize("settings, problem", [
    ({"ARCHIVE": {"default": "rename"}}, "ARCHIVE"),
    ({"ARCHIVE": "soft"}, "ARCHIVE"),
    ({"ARCHIVE_SCHEMA": "public"}, "ARCHIVE_SCHEMA"),
    ({"ARCHIVE_SCHEMA": ""}, "ARCHIVE_SCHEMA"),
    ({"ARCHIVE_KEEP_DAYS": 0}, "ARCHIVE_KEEP_DAYS"),
])
def test_archive_settings_are_checked(settings, problem):
    from safemigrate.checks import check_settings

    with override_settings(SAFEMIGRATE=settings):
        (error,) = check_settings()
    assert problem in error.msg and error.id in ("safemigrate.E003", "safemigrate.E005")
    with override_settings(SAFEMIGRATE={"ARCHIVE": {"default": False, "shop": "copy"}, "ARCHIVE_KEEP_DAYS": None}):
        assert check_settings() == []
