"""Contract archives what it drops (issue 25): each kind, restore, purge, bad input, names, locks.

Operation-level tests on a real server: the contract step is applied with
``apply_operations`` (its migration is then called ``manual``), archives are
finished with ``finish_pending`` as ``migrate`` does after each migration,
and restored or purged with the ``archive`` command. The same flows under
traffic with a lock blocker are in ``tests/test_archive_traffic.py``.
"""

import json

import pytest
from django.core.management.base import CommandError
from django.db import connection, models
from django.db.migrations.state import ModelState, ProjectState
from django.test import override_settings

from safemigrate.operations import (ChangePrimaryKeyToBigint, ChangeTypeViaCopy, DropColumn, DropTable,
                                    FinishChangePrimaryKeyToBigint, FinishChangeTypeViaCopy, FinishRenameViaCopy,
                                    RenameViaCopy)
from safemigrate.pg import archive_store as store
from safemigrate.pg.archive import finish_pending
from safemigrate.pg.archive_ddl import held_index_name
from tests.utils import apply_operations, execute, fill_table, run_command, unapply_operations

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_archive(transactional_db):
    """Each test starts without archives (the manifest outlives the tables other tests drop)."""
    execute(f"DROP SCHEMA IF EXISTS {store.schema_name()} CASCADE")
    yield


def archives(**where):
    found = store.select(connection)
    return [a for a in found if all(getattr(a, key) == value for key, value in where.items())]


def archive_json(*args):
    out, _ = run_command("archive", *args, "--json")
    return json.loads(out)


def columns(table):
    return {name: (nullable, default) for name, nullable, default in execute(
        "SELECT column_name, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s", [table])}


def values(table, column):
    return dict(execute(f'SELECT id, "{column}" FROM "{table}" ORDER BY id'))


def indexes(table):
    return {name for (name,) in execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])}


def relfilenode(table):
    return execute("SELECT pg_relation_filenode(%s::regclass)", [f'"{table}"'])[0][0]


def model_state(table, *fields, name="Item"):
    state = ProjectState()
    state.add_model(ModelState("shop", name, [("id", models.BigAutoField(primary_key=True)), *fields],
                               options={"db_table": table}))
    return state


# -- column removal --------------------------------------------------------------------------


def removal_table(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, v int NOT NULL, '
            f'legacy int DEFAULT 5 CHECK (legacy >= 0))')
    execute(f'CREATE INDEX "{table_name}_legacy_idx" ON "{table_name}" (legacy)')
    execute(f'CREATE INDEX "{table_name}_expr_idx" ON "{table_name}" ((legacy + v))')
    fill_table(table_name, 1000, v="i", legacy="CASE WHEN i %% 10 = 0 THEN NULL ELSE i * 2 END")
    # The expand step (RemoveFieldSafely) left it nullable: the new code omits it.
    return model_state(table_name, ("v", models.IntegerField()))


def test_removed_column_is_archived_soft_and_restored_after_the_reverse(table_name):
    state = removal_table(table_name)
    before = values(table_name, "legacy")
    node = relfilenode(table_name)
    drop = DropColumn("item", "legacy", field=models.IntegerField(default=5))
    apply_operations([drop], state)
    (archive,) = archives(table_name=table_name)
    name = archive.archive_name
    assert name == "_archived_manual_legacy" or name.startswith("_archived_")
    assert archive.state == "pending" and archive.reason == "removal" and archive.mode == "soft"
    assert "legacy" not in columns(table_name) and columns(table_name)[name] == ("YES", None)
    # Nothing writes pay for or trip over: no index, no constraint, no default, nullable. The
    # indexes were renamed aside in the locked step (a drop unlinks the files while the lock is
    # held) and dropped CONCURRENTLY right after it; the manifest names them.
    held = {held_index_name(f"{table_name}_legacy_idx", name), held_index_name(f"{table_name}_expr_idx", name)}
    assert {index["held_as"] for index in archive.definition["indexes"]} == held
    assert indexes(table_name) == {f"{table_name}_pkey"}
    assert execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                   [table_name]) == [(0,)]
    assert relfilenode(table_name) == node  # no rewrite
    finish_pending(connection)
    (archive,) = archives(table_name=table_name)
    assert archive.state == "archived" and archive.row_count == 900 and archive.checksum
    assert "CREATE INDEX" in archive.ddl and "CHECK" in archive.ddl and "DEFAULT 5" in archive.ddl
    # New code writes: an insert, an update of an archived row.
    execute(f'INSERT INTO "{table_name}" (id, v) VALUES (5001, 1)')
    execute(f'UPDATE "{table_name}" SET v = -1 WHERE id = 3')
    # The contract is reversed: the column comes back empty; then restore.
    unapply_operations([drop], state)
    execute(f'UPDATE "{table_name}" SET legacy = 77 WHERE id = 4')  # old code wrote it since the reverse
    (result,) = archive_json("restore", str(archive.id))
    assert result["action"] == "restored" and result["checksum_ok"] is True
    assert result["values"] == 900 and result["kept"] == 1 and result["restored"] == 899, json.dumps(result)
    after = values(table_name, "legacy")
    assert after[4] == 77 and after[5001] is None
    assert {k: v for k, v in after.items() if k not in (4, 5001)} == {k: v for k, v in before.items() if k != 4}
    # Its index, expression index and CHECK are back; the archive column is gone.
    assert {f"{table_name}_legacy_idx", f"{table_name}_expr_idx"} <= indexes(table_name)
    assert execute("SELECT convalidated FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c'",
                   [table_name]) == [(True,)]
    assert name not in columns(table_name)
    assert archives(table_name=table_name)[0].state == "restored"
    # A second restore is a no-op that says so.
    (again,) = archive_json("restore", str(archive.id))
    assert again["action"] == "already restored" and again["checksum_ok"] is True


def test_a_unique_index_is_dropped_in_the_archive_step_and_a_plain_one_set_aside(table_name):
    """In an atomic migration the set-aside index stays until the finish after the migration."""
    state = removal_table(table_name)
    execute(f'CREATE UNIQUE INDEX "{table_name}_legacy_uniq" ON "{table_name}" (legacy) WHERE v > 0')
    apply_operations([DropColumn("item", "legacy", field=models.IntegerField(default=5))], state, atomic=True)
    (archive,) = archives(table_name=table_name)
    recorded = {index["name"]: index.get("held_as") for index in archive.definition["indexes"]}
    assert recorded[f"{table_name}_legacy_uniq"] is None, "a unique index is never set aside"
    assert recorded[f"{table_name}_legacy_idx"] == held_index_name(f"{table_name}_legacy_idx",
                                                                    archive.archive_name)
    assert f"{table_name}_legacy_uniq" not in indexes(table_name)
    assert recorded[f"{table_name}_legacy_idx"] in indexes(table_name)
    finish_pending(connection)
    assert indexes(table_name) == {f"{table_name}_pkey"}
    assert "UNIQUE" in archive.ddl and f"{table_name}_legacy_uniq" in archive.ddl


@override_settings(SAFEMIGRATE={"ARCHIVE": {"default": "copy"}, "BATCH_INITIAL_SIZE": 100, "BATCH_MIN_SIZE": 100})
def test_removed_column_in_copy_mode_goes_to_an_archive_table_in_batches(table_name):
    state = removal_table(table_name)
    before = values(table_name, "legacy")
    drop = DropColumn("item", "legacy", field=models.IntegerField(default=5))
    apply_operations([drop], state)
    (archive,) = finish_pending(connection)
    assert archive.mode == "copy" and archive.state == "archived" and archive.row_count == 900
    assert not [c for c in columns(table_name) if c.startswith("_archived_")]  # the column is gone
    copy = store.qualified(connection, archive.copy_table)
    assert execute(f"SELECT count(*) FROM {copy}") == [(900,)]
    assert dict(execute(f"SELECT pk, value FROM {copy}")) == {k: v for k, v in before.items() if v is not None}
    # Progress forgotten: none of this table, none of an archive (other tests' may remain in the shared table).
    assert execute("SELECT count(*) FROM safemigrate_backfill_progress WHERE table_name = %s OR name LIKE %s",
                   [table_name, "archive.%"]) == [(0,)]
    unapply_operations([drop], state)
    (result,) = archive_json("restore", str(archive.id))
    assert result["restored"] == 900 and result["checksum_ok"] and result["live_checksum_equal"]
    assert values(table_name, "legacy") == before
    assert execute("SELECT to_regclass(%s)", [copy]) == [(None,)]


@override_settings(SAFEMIGRATE={"ARCHIVE": {"default": "soft", "shop": False}})
def test_archive_off_for_an_app_drops_for_real(table_name):
    state = removal_table(table_name)
    apply_operations([DropColumn("item", "legacy", field=models.IntegerField())], state)
    assert set(columns(table_name)) == {"id", "v"}
    assert archives(table_name=table_name) == []


def test_a_new_column_reusing_an_archived_name_works_and_is_archived_under_another_name(table_name):
    state = removal_table(table_name)
    drop = DropColumn("item", "legacy", field=models.IntegerField())
    apply_operations([drop], state)
    execute(f'ALTER TABLE "{table_name}" ADD COLUMN legacy text NOT NULL DEFAULT \'new\'')
    execute(f'CREATE INDEX "{table_name}_legacy_idx" ON "{table_name}" (legacy)')  # the archived one's name
    apply_operations([drop], state)
    first, second = archives(table_name=table_name)
    assert first.archive_name != second.archive_name
    assert {first.archive_name, second.archive_name} <= set(columns(table_name))
    finish_pending(connection)
    assert [a.row_count for a in archives(table_name=table_name)] == [900, 1000]


def test_sqlmigrate_shows_the_archive_step(table_name):
    state = removal_table(table_name)
    _, sql = apply_operations([DropColumn("item", "legacy")], state, collect_sql=True)
    text = "\n".join(sql)
    assert "archived unless ARCHIVE is off" in text and 'RENAME COLUMN "legacy" TO "_archived_' in text
    assert "DROP COLUMN" not in text


def test_a_virtual_generated_column_is_dropped_not_archived_and_sqlmigrate_says_so(table_name):
    """It stores nothing, and PostgreSQL cannot make it a plain column: the run drops it, and the plan says so."""
    if connection.pg_version < 180000:
        pytest.skip("VIRTUAL generated columns are PostgreSQL 18's")
    state = removal_table(table_name)
    execute(f'ALTER TABLE "{table_name}" ADD COLUMN twice int GENERATED ALWAYS AS (v * 2) VIRTUAL')
    twice = models.GeneratedField(expression=models.F("v") * 2, output_field=models.IntegerField(),
                                  db_persist=False)
    drop = DropColumn("item", "twice", field=twice)
    _, sql = apply_operations([drop], state, collect_sql=True)
    text = "\n".join(sql)
    assert 'DROP COLUMN IF EXISTS "twice"' in text, text
    assert "RENAME COLUMN" not in text, text
    apply_operations([drop], state)
    assert "twice" not in columns(table_name)
    assert archives(table_name=table_name) == []


# -- table removal ---------------------------------------------------------------------------


@pytest.fixture
def tables(table_name):
    parent, child = f"{table_name}_p", table_name
    execute(f'CREATE TABLE "{parent}" (id bigserial PRIMARY KEY)')
    execute(f'CREATE TABLE "{child}" (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, '
            f'p_id bigint REFERENCES "{parent}" ON DELETE CASCADE, up_id bigint REFERENCES "{child}", '
            f'note text NOT NULL DEFAULT \'x\')')
    execute(f'CREATE INDEX "{child}_note_idx" ON "{child}" (note)')
    fill_table(parent, 100, id="i")
    fill_table(child, 1000, p_id="i %% 100 + 1", up_id="CASE WHEN i > 1 THEN i - 1 END", note="'n' || i")
    yield parent, child
    execute(f'DROP TABLE IF EXISTS "{child}", "{parent}" CASCADE')


def test_dropped_table_moves_to_the_archive_schema_and_restore_moves_it_back(tables):
    parent, child = tables
    rows = execute(f'SELECT * FROM "{child}" ORDER BY id')
    node = relfilenode(child)
    apply_operations([DropTable(child)], ProjectState())
    assert execute("SELECT to_regclass(%s)", [f'"{child}"']) == [(None,)]
    (archive,) = finish_pending(connection)
    assert archive.kind == "table" and archive.state == "archived" and archive.row_count == 1000
    archived = store.qualified(connection, archive.archive_name)
    assert archive.archive_name == f"{child}__shop_manual"
    assert execute("SELECT pg_relation_filenode(%s::regclass)", [archived]) == [(node,)]  # moved, not rewritten
    # Its foreign keys are gone (recorded): deleting a parent row neither fails nor cascades into the archive.
    assert execute(f"SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass",
                   [archived]) == [(0,)]
    execute(f'DELETE FROM "{parent}" WHERE id = 100')
    assert execute(f"SELECT count(*) FROM {archived}") == [(1000,)]
    # Its name is free meanwhile; restoring over a table of that name is refused, nothing changed.
    execute(f'CREATE TABLE "{child}" (id int)')
    with pytest.raises(CommandError, match="restoring over an existing table"):
        run_command("archive", "restore", str(archive.id))
    assert execute(f"SELECT count(*) FROM {archived}") == [(1000,)]
    execute(f'DROP TABLE "{child}"')
    (result,) = archive_json("restore", str(archive.id))
    assert result["action"] == "restored" and result["checksum_ok"] is True and result["values"] == 1000
    assert execute(f'SELECT * FROM "{child}" ORDER BY id') == rows
    # Foreign keys back: the self-reference validated; the parent one stays NOT VALID (row 100 went).
    fks = dict(execute("SELECT pg_get_constraintdef(oid), convalidated FROM pg_constraint "
                       "WHERE contype = 'f' AND conrelid = %s::regclass", [f'"{child}"']))
    assert len(fks) == 2 and sorted(fks.values()) == [False, True]
    assert any("NOT VALID" in note for note in result["notes"])
    assert f"{child}_note_idx" in indexes(child)
    # The identity continues.
    assert execute(f'INSERT INTO "{child}" (note) VALUES (\'more\') RETURNING id') == [(1001,)]


# -- rename source ---------------------------------------------------------------------------


@pytest.fixture
def customers(table_name):
    state = model_state(table_name, ("name", models.CharField(max_length=50, db_index=True)),
                        ("points", models.IntegerField(default=0)), name="Customer")
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, name varchar(50) NOT NULL, '
            f'points integer NOT NULL DEFAULT 0)')
    execute(f'CREATE INDEX "{table_name}_name_idx" ON "{table_name}" (name)')
    fill_table(table_name, 2000, name="'c' || i", points="i")
    return table_name, state


def test_rename_source_is_archived_and_restore_keeps_the_rows_written_since(customers):
    table, state = customers
    before = values(table, "name")
    expand = RenameViaCopy("customer", "name", "full_name")
    new_state, _ = apply_operations([expand], state)
    contract = FinishRenameViaCopy("customer", "name", "full_name")
    apply_operations([contract], new_state)
    (archive,) = finish_pending(connection)
    assert archive.reason == "rename" and archive.row_count == 2000
    assert f"{table}_name_idx" not in indexes(table)
    # The new code writes: an update, an insert.
    execute(f'UPDATE "{table}" SET full_name = %s WHERE id = 2', ["renamed-since"])
    execute(f'INSERT INTO "{table}" (full_name, points) VALUES (%s, 1)', ["inserted-since"])
    unapply_operations([contract], new_state)  # the old column comes back, copied from the new one
    (result,) = archive_json("restore", str(archive.id))
    assert result["checksum_ok"] and result["restored"] == 0 and result["equal"] == 1999 and result["kept"] == 1
    after = values(table, "name")
    assert after[2] == "renamed-since" and after[2001] == "inserted-since"
    assert {k: v for k, v in after.items() if k not in (2, 2001)} == {k: v for k, v in before.items() if k != 2}
    # The old column's index and NOT NULL are back.
    assert f"{table}_name_idx" in indexes(table)
    assert columns(table)["name"][0] == "NO"


# -- type-change source ----------------------------------------------------------------------


@pytest.fixture
def codes(table_name):
    state = model_state(table_name, ("code", models.TextField()), name="Code")
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, code text NOT NULL)')
    execute(f'CREATE INDEX "{table_name}_code_idx" ON "{table_name}" (code)')
    fill_table(table_name, 1000, code="lpad(i::text, 4, '0')")
    return table_name, state


def test_type_change_reverse_swaps_the_exact_old_values_back(codes):
    table, state = codes
    before = values(table, "code")
    assert before[7] == "0007"
    expand = ChangeTypeViaCopy("code", "code", models.IntegerField(db_index=True))
    new_state, _ = apply_operations([expand], state)
    contract = FinishChangeTypeViaCopy("code", "code", models.IntegerField(db_index=True))
    apply_operations([contract], new_state)
    assert execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = 'code'",
                   [table]) == [("integer",)]
    (archive,) = finish_pending(connection)
    assert archive.reason == "type-change" and archive.definition["type"] == "text"
    # A type change is restored by reversing, not by the command.
    with pytest.raises(CommandError, match="reversing"):
        run_command("archive", "restore", str(archive.id))
    # The new code writes.
    execute(f'UPDATE "{table}" SET code = 42 WHERE id = 5')
    execute(f'INSERT INTO "{table}" (id, code) VALUES (5000, 9)')
    unapply_operations([contract], new_state)
    after = values(table, "code")
    assert after[5] == "42" and after[5000] == "9"
    assert {k: v for k, v in after.items() if k not in (5, 5000)} == {k: v for k, v in before.items() if k != 5}
    # The expand state: the old column in use, its index back, the integer shadow kept in step.
    assert execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = 'code'",
                   [table]) == [("text",)]
    assert f"{table}_code_idx" in indexes(table)
    execute(f'UPDATE "{table}" SET code = %s WHERE id = 6', ["0066"])
    assert execute(f'SELECT code__sm_new FROM "{table}" WHERE id = 6') == [(66,)]
    assert archives(table_name=table)[0].state == "restored"
    (again,) = archive_json("restore", str(archive.id))
    assert again["action"] == "already restored" and again["checksum_ok"] is True
    # The contract runs again, and archives again.
    apply_operations([contract], new_state)
    assert [a.state for a in archives(table_name=table)] == ["restored", "pending"]


def test_type_change_reverse_without_an_archive_is_refused(codes):
    table, state = codes
    expand = ChangeTypeViaCopy("code", "code", models.IntegerField())
    new_state, _ = apply_operations([expand], state)
    contract = FinishChangeTypeViaCopy("code", "code", models.IntegerField())
    with override_settings(SAFEMIGRATE={"ARCHIVE": {"default": False}}):
        apply_operations([contract], new_state)
    from django.db.migrations.exceptions import IrreversibleError

    with pytest.raises(IrreversibleError, match="dropped, not archived"):
        unapply_operations([contract], new_state)


# -- bigint swap -----------------------------------------------------------------------------


@pytest.fixture
def authors(transactional_db):
    from tests.copy_tables import author_and_book

    author, book, state = author_and_book(500, 500)
    yield author, book, state
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{book}", "{author}" CASCADE')


def test_bigint_swap_archives_the_int_columns_and_restore_checks_them(authors):
    author, book, state = authors
    expand = ChangePrimaryKeyToBigint("author")
    new_state, _ = apply_operations([expand], state)
    contract = FinishChangePrimaryKeyToBigint("author")
    apply_operations([contract], new_state)
    finish_pending(connection)
    found = {a.target: a for a in archives(reason="bigint")}
    assert set(found) == {f"{author}.id", f"{book}.author_id"}
    assert found[f"{author}.id"].row_count == 500 and found[f"{book}.author_id"].row_count == 500
    # The new code writes: a big key.
    execute(f'INSERT INTO "{author}" (id, name) VALUES (5000000000, %s)', ["big"])
    execute(f'UPDATE "{book}" SET author_id = 5000000000 WHERE id = 1')
    unapply_operations([contract], new_state)  # keeps bigint
    assert execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = 'id'",
                   [author]) == [("bigint",)]
    results = archive_json("restore", str(found[f"{author}.id"].id), str(found[f"{book}.author_id"].id))
    assert [(r["checksum_ok"], r["equal"], r["kept"]) for r in results] == [(True, 500, 0), (True, 499, 1)]
    assert not [c for c in columns(author) if c.startswith("_archived_")]
    assert not [c for c in columns(book) if c.startswith("_archived_")]
