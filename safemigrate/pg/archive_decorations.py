"""Building an archived column's indexes and constraints again, without long locks.

The manifest holds each definition as PostgreSQL printed it. They come back
the way safemigrate builds everything: indexes (and the indexes of unique
constraints) ``CONCURRENTLY``, CHECKs and foreign keys ``NOT VALID`` and
then validated (SHARE UPDATE EXCLUSIVE: traffic continues), NOT NULL through
a validated CHECK. Every step asks the catalog first, so a killed restore
that runs again skips what is there.

A constraint that no longer holds (rows written since the contract break
it) is kept ``NOT VALID`` and reported, rather than failing a restore that
has already put the data back.
"""

from dataclasses import dataclass, field

from django.db import DatabaseError

from ..exceptions import UnsafeOperationError
from . import catalog, sql
from .archive_ddl import deferral, referenced_table, with_column, without_not_valid
from .ddl import sqlstate
from .runner import run
from .steps import CHECK_VIOLATION, FK_VIOLATION, set_not_null


@dataclass
class Built:
    """What ``build`` did: renames still owed (``{built name: final name}``) and notes."""

    index_renames: dict = field(default_factory=dict)
    constraint_renames: dict = field(default_factory=dict)
    unique_constraints: list = field(default_factory=list)  # (final name, index name, definition)
    later: list = field(default_factory=list)  # foreign keys of other tables, added once the column is final
    notes: list = field(default_factory=list)


def _validate(editor, table, name, built, label):
    try:
        run(editor, [sql.validate_constraint(table, name).but(label=f"validate {name}")], label=label)
    except DatabaseError as exc:
        if sqlstate(exc) not in (CHECK_VIOLATION, FK_VIOLATION):
            raise
        built.notes.append(f"{name} is back but NOT VALID: rows written since the contract break it "
                           f"(find them, fix them, then ALTER TABLE ... VALIDATE CONSTRAINT {name})")


def build(editor, label, table, facts, *, column, on_column, temporary=None):
    """Build the indexes and constraints of ``facts`` (recorded on ``column``) on ``on_column`` of ``table``.

    ``temporary`` maps a recorded name to the name to build it under (the
    type-change reverse builds on the archived column, renamed into place
    later); without it everything gets its recorded name at once and
    unique constraints are attached here.
    """
    connection = editor.connection
    quote = editor.quote_name
    built = Built()
    name_for = temporary or (lambda name: name)
    for index in facts["indexes"]:
        name = name_for(index["name"])
        definition = with_column(index["definition"], column, on_column, quote)
        run(editor, [sql.create_index_concurrently(sql.index_from_definition(definition, name), name, table)],
            label=label)
        if name != index["name"]:
            built.index_renames[name] = index["name"]
    for constraint in facts["constraints"]:
        final, kind = constraint["name"], constraint["type"]
        if constraint["relname"] != table:
            built.later.append(constraint)
            continue
        name = name_for(final)
        if kind in ("c", "f"):
            definition = with_column(constraint["definition"], column, on_column, quote)
            run(editor, [_not_valid(table, name, definition)], label=label)
            if catalog.constraint_state(connection, table, name):
                _validate(editor, table, name, built, label)
            if name != final:
                built.constraint_renames[name] = final
        elif kind == "u" and constraint["index_definition"]:
            definition = with_column(constraint["index_definition"], column, on_column, quote)
            if not temporary and catalog.constraint_state(connection, table, final):
                continue
            run(editor, [sql.create_index_concurrently(sql.index_from_definition(definition, name), name, table)
                         .but(label=f"unique index {name} concurrently")], label=label)
            if temporary:
                built.unique_constraints.append((final, name, constraint["definition"]))
            else:
                run(editor, [attach_index(table, final, name, constraint["definition"])], label=label)
        else:
            built.notes.append(f"{final} ({constraint['definition']}) is not rebuilt automatically: "
                               f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(final)} {constraint['definition']}")
    return built


def add_foreign_keys(editor, label, constraints, built):
    """Foreign keys of other tables that referenced the column: NOT VALID, then validated."""
    connection = editor.connection
    for constraint in constraints:
        table, name = constraint["relname"], constraint["name"]
        if not catalog.table_exists(connection, table):
            built.notes.append(f"{table}.{name} not restored: {table} no longer exists")
            continue
        run(editor, [_not_valid(table, name, constraint["definition"]).but(label=f"add {table}.{name} NOT VALID")],
            label=label)
        _validate(editor, table, name, built, label)


def restore_not_null(editor, label, table, column, built):
    """NOT NULL back through a validated CHECK; a column that now holds NULLs stays nullable (noted)."""
    info = catalog.column_info(editor.connection, table, column)
    if info is None or not info["nullable"]:
        return
    try:
        run(editor, set_not_null(editor, table, column, model_name=table), label=label)
    except UnsafeOperationError as exc:
        built.notes.append(f"{table}.{column} stays nullable: {str(exc).split('. ')[0]}")


def _not_valid(table, name, definition):
    """A CHECK or FOREIGN KEY from its recorded definition, NOT VALID (instant; validated after)."""
    return sql.add_constraint_not_valid(table, name, without_not_valid(definition),
                                        target=referenced_table(definition))


def attach_index(table, name, index, definition):
    """A UNIQUE / PRIMARY KEY constraint ``name`` over an index built concurrently before (instant)."""
    if definition.startswith("PRIMARY KEY"):
        return sql.add_primary_key_using_index(table, name, index)
    return sql.add_unique_using_index(table, name, index, deferral(definition))
