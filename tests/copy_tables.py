"""Tables for the copy tests (rename, type change and bigint key through a copy): filled tables and helpers."""

import pytest
from django.db import migrations, models
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter

from tests.utils import apply_operations, execute, fill_table, unique_table


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


def author_and_book(authors, books):
    """Tables ``author`` (int key) and ``book`` (a foreign key to it), filled; ``(author, book, state)``.

    The int key that the bigint tests widen, with a referencing column that must follow.
    The caller drops both tables.
    """
    author, book = unique_table("author"), unique_table("book")
    state, _ = apply_operations([
        migrations.CreateModel("Author", [("id", models.AutoField(primary_key=True)),
                                          ("name", models.CharField(max_length=20))], options={"db_table": author}),
        migrations.CreateModel("Book", [("id", models.AutoField(primary_key=True)),
                                        ("author", models.ForeignKey("shop.Author", models.CASCADE))],
                               options={"db_table": book}),
    ], ProjectState(), atomic=True)
    fill_table(author, authors, name="'a' || i")
    fill_table(book, books, author_id="i")
    return author, book, state


@pytest.fixture
def customers(table_name):
    state = customer_state(table_name)
    apply_operations([migrations.CreateModel(
        "Customer", list(state.models["shop", "customer"].fields.items()), options={"db_table": table_name})],
        atomic=True)
    fill_table(table_name, 2000, name="'c' || i", points="i")
    return table_name, state


def cols(table):
    """Columns of ``table``, without those a contract archived (docs/pages/archive.md)."""
    return {name for (name,) in execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                                        [table]) if not name.startswith("_archived_")}


def source_of(op):
    return MigrationWriter(type("Migration", (migrations.Migration,), {"operations": [op]})("0002_x", "shop")).as_string()


def definitions(table):
    """Constraint and index definitions of ``table``, names left out (meaning, not names)."""
    constraints = sorted(definition for (definition,) in execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass", [f'"{table}"']))
    indexes = sorted(execute(
        "SELECT regexp_replace(pg_get_indexdef(indexrelid), 'INDEX \\S+ ON', 'INDEX ON') FROM pg_index "
        "WHERE indrelid = %s::regclass", [f'"{table}"']))
    return constraints, [definition for (definition,) in indexes]


def create_models(state, *names):
    return apply_operations([migrations.CreateModel(
        name, list(state.models["shop", name.lower()].fields.items()),
        options=dict(state.models["shop", name.lower()].options)) for name in names], atomic=True)[0]
