"""ChangePrimaryKeyToBigint: int identity key and the FKs to it become bigint."""

import pytest
from django.db import IntegrityError, connection, migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter

from safemigrate.pg import backfill, catalog
from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import ChangePrimaryKeyToBigint, FinishChangePrimaryKeyToBigint
from safemigrate.pg.catalog import referencing_keys
from tests.copy_tables import author_and_book
from tests.utils import apply_operations, execute, unapply_operations, unique_table


@pytest.fixture
def authors(transactional_db):
    author, book, state = author_and_book(3000, 3000)
    execute('SELECT setval(pg_get_serial_sequence(%s, %s), 3000)', [f'"{author}"', "id"])
    yield author, book, state
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{book}", "{author}" CASCADE')


def types(table):
    """Column types, without columns a contract archived (docs/pages/archive.md)."""
    return dict(execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                        "AND column_name NOT LIKE '\\_archived\\_%%'", [table]))


def test_int_primary_key_and_foreign_keys_become_bigint(authors, monkeypatch):
    author, book, state = authors
    expand = ChangePrimaryKeyToBigint("author")
    # Killed during the copy of the referencing table: the re-run finishes.
    real, calls = backfill.backfill_table, []

    def killed_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(backfill, "backfill_table", killed_second)
    with pytest.raises(KeyboardInterrupt):
        apply_operations([expand], state)
    monkeypatch.setattr(backfill, "backfill_table", real)
    new_state, _ = apply_operations([expand], state)
    assert types(author)["id__sm_new"] == "bigint" and types(book)["author_id__sm_new"] == "bigint"
    # Old code keeps inserting with int keys; shadows follow.
    execute(f'INSERT INTO "{author}" (name) VALUES (%s)', ["late"])
    execute(f'INSERT INTO "{book}" (author_id) VALUES (3001)')
    execute(f'UPDATE "{book}" SET author_id = 5 WHERE id = 1')
    assert execute(f'SELECT count(*) FROM "{author}" WHERE id__sm_new IS DISTINCT FROM id') == [(0,)]
    assert execute(f'SELECT count(*) FROM "{book}" WHERE author_id__sm_new IS DISTINCT FROM author_id') == [(0,)]
    assert new_state.apps.get_model("shop", "Author")._meta.pk.get_internal_type() == "BigAutoField"
    contract = FinishChangePrimaryKeyToBigint("author")
    assert contract.stage == "contract"
    apply_operations([contract], new_state)
    assert types(author) == {"id": "bigint", "name": "character varying"}
    assert types(book)["author_id"] == "bigint" and "author_id__sm_new" not in types(book)
    [(_, _, fk)] = referencing_keys(connection, author, "id")
    assert execute("SELECT convalidated FROM pg_constraint WHERE conname = %s", [fk]) == [(True,)]
    assert execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                   [f'"{author}"']) == [(1,)]
    fk_index = connection.schema_editor()._create_index_name(book, ["author_id"])
    assert catalog.index_state(connection, fk_index)["valid"]
    # The identity moved: the next key continues after 3001, and big keys fit.
    Author = new_state.apps.get_model("shop", "Author")
    Book = new_state.apps.get_model("shop", "Book")
    assert Author.objects.create(name="new").pk == 3002
    big = Author.objects.create(id=5_000_000_000, name="big")
    Book.objects.create(author=big)
    with pytest.raises(IntegrityError):
        execute(f'INSERT INTO "{book}" (author_id) VALUES (999999)')
    assert Book.objects.get(pk=1).author_id == 5
    apply_operations([contract], new_state)  # re-run: already swapped
    source = MigrationWriter(type("Migration", (migrations.Migration,), {"operations": [expand, contract]})(
        "0002_x", "shop")).as_string()
    assert "safemigrate.operations.ChangePrimaryKeyToBigint(" in source
    assert "safemigrate.operations.FinishChangePrimaryKeyToBigint(" in source


def test_failed_swap_rolls_back_whole_and_expand_reverses(authors, monkeypatch):
    author, book, state = authors
    expand, contract = ChangePrimaryKeyToBigint("author"), FinishChangePrimaryKeyToBigint("author")
    new_state, _ = apply_operations([expand], state)
    from safemigrate.operations import bigint
    from safemigrate.pg.statements import Statement

    real = bigint.swap_statements
    monkeypatch.setattr(bigint, "swap_statements", lambda *args: [*real(*args), Statement("SELECT 1 / 0")])
    with pytest.raises(Exception, match="division by zero"):
        apply_operations([contract], new_state)
    # Nothing of the swap stuck: int key, shadow and triggers in place, FK intact.
    assert types(author)["id"] == "integer" and "id__sm_new" in types(author)
    assert len(referencing_keys(connection, author, "id")) == 1
    execute(f'INSERT INTO "{author}" (name) VALUES (%s)', ["after failure"])
    assert execute(f'SELECT count(*) FROM "{author}" WHERE id__sm_new IS DISTINCT FROM id') == [(0,)]
    # Reversing the expand removes every shadow column.
    unapply_operations([expand], state)
    assert "id__sm_new" not in types(author) and "author_id__sm_new" not in types(book)
    monkeypatch.undo()
    new_state, _ = apply_operations([expand], state)
    apply_operations([contract], new_state)
    assert types(author)["id"] == "bigint"


def test_serial_keys_are_refused_with_a_message(table_name):
    execute(f'CREATE TABLE "{table_name}" (id serial PRIMARY KEY)')
    state = ProjectState()
    state.add_model(ModelState("shop", "Legacy", [("id", models.AutoField(primary_key=True))],
                               options={"db_table": table_name}))
    with pytest.raises(UnsafeOperationError, match="serial key.*ADD GENERATED BY DEFAULT AS IDENTITY"):
        apply_operations([ChangePrimaryKeyToBigint("legacy")], state)


def _definitions(table):
    """Constraint and index definitions of ``table``, names left out."""
    constraints = sorted(d for (d,) in execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype <> 'n'",
        [f'"{table}"']))
    indexes = sorted(d for (d,) in execute(
        "SELECT regexp_replace(pg_get_indexdef(indexrelid), 'INDEX \\S+ ON', 'INDEX ON') FROM pg_index "
        "WHERE indrelid = %s::regclass", [f'"{table}"']))
    return constraints, indexes


def test_bigint_key_keeps_m2m_unique_one_to_one_unique_and_fk_actions(transactional_db):
    """Issue 9 item 5: every index and constraint on the referencing columns survives the swap as it was."""
    author, profile, tag, link = (unique_table(p) for p in ("author", "profile", "tag", "link"))
    state, _ = apply_operations([
        migrations.CreateModel("Author", [("id", models.AutoField(primary_key=True))], options={"db_table": author}),
        migrations.CreateModel("Tag", [("id", models.BigAutoField(primary_key=True))], options={"db_table": tag}),
        migrations.CreateModel("Profile", [
            ("id", models.BigAutoField(primary_key=True)),
            ("author", models.OneToOneField("shop.Author", models.CASCADE)),
        ], options={"db_table": profile}),
        migrations.AddField("author", "tags", models.ManyToManyField("shop.Tag", db_table=link)),
    ], ProjectState(), atomic=True)
    try:
        execute(f'INSERT INTO "{author}" (id) OVERRIDING SYSTEM VALUE SELECT generate_series(1, 50)')
        execute(f'INSERT INTO "{tag}" (id) SELECT generate_series(1, 5)')
        execute(f'INSERT INTO "{profile}" (author_id) SELECT generate_series(1, 50)')
        execute(f'INSERT INTO "{link}" (author_id, tag_id) SELECT i, 1 + i % 5 FROM generate_series(1, 50) i')
        before = {t: _definitions(t) for t in (profile, link)}
        expand, contract = ChangePrimaryKeyToBigint("author"), FinishChangePrimaryKeyToBigint("author")
        new_state, _ = apply_operations([expand], state)
        apply_operations([contract], new_state)
        after = {t: _definitions(t) for t in (profile, link)}
        assert after == before
        assert types(profile)["author_id"] == "bigint" and types(link)["author_id"] == "bigint"
        with pytest.raises(IntegrityError):
            execute(f'INSERT INTO "{link}" (author_id, tag_id) VALUES (1, 2)')  # (1, 2) exists: UNIQUE kept
        with pytest.raises(IntegrityError):
            execute(f'INSERT INTO "{profile}" (author_id) VALUES (1)')  # one-to-one: unique kept
        assert execute(f"SELECT count(*) FROM {backfill.PROGRESS_TABLE} WHERE name LIKE %s",
                       [f"%.bigint.%"]) == [(0,)]
    finally:
        connection.close()
        execute(f'DROP TABLE IF EXISTS "{link}", "{profile}", "{tag}", "{author}" CASCADE')


def test_bigint_key_keeps_a_hand_made_on_delete_cascade(authors):
    author, book, state = authors
    [(_, _, fk)] = referencing_keys(connection, author, "id")
    execute(f'ALTER TABLE "{book}" DROP CONSTRAINT "{fk}"')
    execute(f'ALTER TABLE "{book}" ADD CONSTRAINT "{fk}" FOREIGN KEY (author_id) REFERENCES "{author}" (id) '
            f'ON DELETE CASCADE')
    before = _definitions(book)
    new_state, _ = apply_operations([ChangePrimaryKeyToBigint("author")], state)
    apply_operations([FinishChangePrimaryKeyToBigint("author")], new_state)
    assert _definitions(book) == before
    execute(f'DELETE FROM "{author}" WHERE id = 7')
    assert execute(f'SELECT count(*) FROM "{book}" WHERE author_id = 7') == [(0,)]


def test_a_plain_integer_key_without_identity_becomes_bigint(table_name):
    """IntegerField(primary_key=True) -> BigIntegerField: no sequence to move, the swap still works."""
    state, _ = apply_operations([migrations.CreateModel(
        "Code", [("id", models.IntegerField(primary_key=True)), ("label", models.TextField())],
        options={"db_table": table_name})], ProjectState(), atomic=True)
    execute(f'INSERT INTO "{table_name}" (id, label) SELECT i, \'l\' || i FROM generate_series(1, 100) i')
    field = models.BigIntegerField(primary_key=True)
    expand = ChangePrimaryKeyToBigint("code", field=field)
    new_state, _ = apply_operations([expand], state)
    assert type(new_state.models["shop", "code"].fields["id"]) is models.BigIntegerField
    apply_operations([FinishChangePrimaryKeyToBigint("code")], new_state)
    assert types(table_name)["id"] == "bigint"
    execute(f'INSERT INTO "{table_name}" (id, label) VALUES (5000000000, \'big\')')
    assert execute(f'SELECT count(*) FROM "{table_name}"') == [(101,)]


def test_an_exclusion_constraint_over_a_referencing_column_refuses_the_swap_before_any_change(authors):
    """A hand-written key swap: the constraint would go with the int column and come back only under a long lock."""
    author, book, state = authors
    execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    execute(f'ALTER TABLE "{book}" ADD CONSTRAINT "{book}_excl" EXCLUDE USING gist (author_id WITH =) '
            f'WHERE (id < 0)')
    with pytest.raises(UnsafeOperationError, match=f"exclusion constraint {book}_excl .*RemoveConstraint"):
        apply_operations([ChangePrimaryKeyToBigint("author")], state)
    assert "author_id__sm_new" not in types(book) and "id__sm_new" not in types(author)
