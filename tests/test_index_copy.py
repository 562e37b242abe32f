"""pg.index_copy: an index rebuilt on swapped columns is the same index once the columns swap back."""

import pytest

from safemigrate.pg import index_copy
from tests.utils import execute

INDEXES = [
    'CREATE INDEX "{t}_a" ON "{t}" ("b", "Odd Col" DESC NULLS LAST) WHERE "b" IS NOT NULL AND note <> \'b\'',
    'CREATE INDEX "{t}_b" ON "{t}" (lower(note) text_pattern_ops) INCLUDE ("b") WHERE ("Odd Col" > 0)',
    'CREATE UNIQUE INDEX "{t}_c" ON "{t}" ((b + 1), note COLLATE "C") NULLS NOT DISTINCT',
    'CREATE INDEX "{t}_d" ON "{t}" USING hash (b) WITH (fillfactor = 70) WHERE (note::text = \'b\'\'s\')',
    'CREATE INDEX "{t}_e" ON "{t}" (note) WHERE b = ANY (ARRAY[1, 2]) AND note <> E\'\\\\b\'',
]


@pytest.fixture
def table(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigint PRIMARY KEY, b int, "Odd Col" int, note text)')
    for statement in INDEXES:
        execute(statement.format(t=table_name))
    return table_name


def _definitions(table):
    return sorted(row[0] for row in execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass AND NOT indisprimary",
        [f'"{table}"']))


def test_copies_on_shadow_columns_become_the_same_indexes_after_the_swap(table, transactional_db):
    before = _definitions(table)
    renames = {"b": "b__sm", "Odd Col": "Odd Col__sm"}
    for column, shadow in renames.items():
        execute(f'ALTER TABLE "{table}" ADD COLUMN "{shadow}" int')
    copies = []
    for (definition,) in execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                                 "WHERE indrelid = %s::regclass AND NOT indisprimary", [f'"{table}"']):
        name = definition.split(" INDEX ", 1)[1].split(" ON ", 1)[0].strip('"')
        copy = index_copy.copy_definition(definition, f"{name}_copy", table, renames)
        assert " CONCURRENTLY " in copy and "__sm" in copy, copy
        execute(copy)
        copies.append(name)
    for column, shadow in renames.items():
        execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
        execute(f'ALTER TABLE "{table}" RENAME COLUMN "{shadow}" TO "{column}"')
    for name in copies:
        execute(f'ALTER INDEX "{name}_copy" RENAME TO "{name}"')
    assert _definitions(table) == before


def test_words_that_are_not_the_column_stay():
    text = index_copy.rename_identifiers(
        "btree (lower((b)::text) COLLATE b, b) WITH (b='1') WHERE ((x.b)::b = 'b') AND b() NULLS b", {"b": "n"})
    assert text == 'btree (lower(("n")::text) COLLATE b, "n") WITH (b=\'1\') WHERE ((x.b)::b = \'b\') AND b() NULLS b'


def test_an_unknown_text_is_refused_not_guessed():
    with pytest.raises(ValueError, match="not an index definition"):
        index_copy.copy_definition("ALTER TABLE t ADD x int", "n", "t", {})


def test_a_plain_copy_leaves_concurrently_out():
    definition = 'CREATE UNIQUE INDEX "i" ON public.t USING btree (a DESC) WHERE (b > 0)'
    assert index_copy.copy_definition(definition, "j", "t", {}, concurrently=False) == \
        'CREATE UNIQUE INDEX "j" ON "t" USING btree (a DESC) WHERE (b > 0)'
    assert index_copy.copy_definition(definition, "j", "t", {}).startswith('CREATE UNIQUE INDEX CONCURRENTLY "j" ON "t"')
