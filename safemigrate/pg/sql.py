"""The DDL builders: the only place in safemigrate where DDL text is written.

Each function returns a ``pg.statements.Statement`` carrying its SQL, the
table lock it takes, how it runs and the catalog check that makes a re-run a
no-op. They read nothing and run nothing: operations put them in plans, the
runner (``pg.runner``) executes them, and ``--plan --annotate``, the plan
JSON and the linter read them as they are.

Identifiers are quoted with Django's PostgreSQL ``quote_name`` (a name that
is already quoted stays as it is); values always travel as parameters.
Names of indexes and constraints come from Django's own naming helpers in
the callers, so a later plain Django migration finds what safemigrate made.

Lock levels, from PostgreSQL's documentation of ALTER TABLE and friends:
ADD/DROP/RENAME COLUMN, SET/DROP DEFAULT, SET/DROP NOT NULL, ADD CHECK and
DROP CONSTRAINT take ACCESS EXCLUSIVE (instant when nothing is scanned);
ADD FOREIGN KEY takes SHARE ROW EXCLUSIVE on both tables; VALIDATE
CONSTRAINT and the CONCURRENTLY index commands take SHARE UPDATE EXCLUSIVE;
CREATE TRIGGER takes SHARE ROW EXCLUSIVE.
"""

import functools
import re

from . import checks
from .classify import QUALIFIED
from .locks import Lock
from .statements import How, Statement

@functools.cache
def _operations():
    # Imported late: the PostgreSQL backend module needs Django's models loaded.
    from django.db.backends.postgresql.operations import DatabaseOperations

    return DatabaseOperations(connection=None)


def q(name):
    """``name`` quoted as Django quotes PostgreSQL identifiers."""
    return _operations().quote_name(name)


def _alter(table, clause, *, label, lock=Lock.ACCESS_EXCLUSIVE, params=(), skip_if=None, **extra):
    return Statement(f"ALTER TABLE {q(table)} {clause}", tuple(params), lock=lock, table=table, label=label,
                     skip_if=skip_if, **extra)


# -- columns ------------------------------------------------------------------


def add_column(table, column, definition, params=()):
    """ADD COLUMN without a rewrite (nullable, or with a constant default): instant."""
    return _alter(table, f"ADD COLUMN IF NOT EXISTS {q(column)} {definition}", params=params,
                  label=f"add column {column}", skip_if=checks.ColumnExists(table, column))


def drop_column(table, column):
    """DROP COLUMN: a catalog change (the space is reclaimed by later writes), instant."""
    return _alter(table, f"DROP COLUMN IF EXISTS {q(column)}", label=f"drop column {column}",
                  skip_if=~checks.ColumnExists(table, column))


def rename_column(table, old, new):
    return _alter(table, f"RENAME COLUMN {q(old)} TO {q(new)}", label=f"rename column {old} to {new}")


def set_not_null(table, column):
    """SET NOT NULL; only ever run once a validated CHECK (col IS NOT NULL) lets PostgreSQL skip its scan."""
    return _alter(table, f"ALTER COLUMN {q(column)} SET NOT NULL", label=f"set {column} not null",
                  skip_if=checks.ColumnNotNull(table, column))


def drop_not_null(table, column):
    return _alter(table, f"ALTER COLUMN {q(column)} DROP NOT NULL", label=f"drop not null on {column}")


def set_default(table, column, expression, params=()):
    """SET DEFAULT: applies to later INSERTs only, no row is touched."""
    return _alter(table, f"ALTER COLUMN {q(column)} SET DEFAULT {expression}", params=params,
                  label=f"set default of {column}")


def drop_default(table, column):
    return _alter(table, f"ALTER COLUMN {q(column)} DROP DEFAULT", label=f"drop default of {column}")


def change_type_in_place(table, column, new_type, collation=None):
    """ALTER TYPE that PostgreSQL does without rewrite or scan (varchar widening, varchar -> text).

    ``collation``: the field's ``db_collation``; an in-place ``TYPE`` keeps the
    column's collation only when told (without it the column would fall back
    to the type's default collation).
    """
    clause = f" COLLATE {q(collation)}" if collation else ""
    return _alter(table, f"ALTER COLUMN {q(column)} TYPE {new_type}{clause}",
                  label=f"change type of {column} to {new_type}")


def comment_on_column(table, column, comment):
    """COMMENT ON COLUMN, for a column safemigrate adds itself (Django comments its own in a statement of its own).

    SHARE UPDATE EXCLUSIVE on the table, instant; it runs in the short
    transaction of the ADD COLUMN it follows. The comment is a parameter.
    """
    return Statement(f"COMMENT ON COLUMN {q(table)}.{q(column)} IS %s", (comment,),
                     lock=Lock.SHARE_UPDATE_EXCLUSIVE, table=table, label=f"comment on column {column}")


def change_type_rewriting(table, column, new_type, budget_ms):
    """ALTER TYPE that rewrites the table: only with the lock already taken and a statement budget.

    Used by one rollback (narrowing an in-place type change back), where no
    copy exists: it runs after ``lock_table`` and ``statement_budget`` in one
    transaction, so traffic waits at most the lock timeout plus the budget.
    """
    return _alter(table, f"ALTER COLUMN {q(column)} TYPE {new_type}", label=f"change type of {column} back",
                  how=How.UNBOUNDED, work="rewrites the table", reason=f"cancelled after {budget_ms} ms")


def add_identity(table, column):
    return _alter(table, f"ALTER COLUMN {q(column)} ADD GENERATED BY DEFAULT AS IDENTITY",
                  label=f"make {column} an identity column")


def drop_identity(table, column):
    return _alter(table, f"ALTER COLUMN {q(column)} DROP IDENTITY IF EXISTS", label=f"drop identity of {column}")


def continue_identity(table, new_column, old_column):
    """Point ``new_column``'s identity sequence past the highest key and the old sequence's last value."""
    return Statement(
        f"SELECT setval(pg_get_serial_sequence(%s, %s), GREATEST("
        f"(SELECT COALESCE(max({q(old_column)}), 0) FROM {q(table)}), "
        f"COALESCE(pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass), 0), 1))",
        (q(table), new_column, q(table), old_column), lock=Lock.ACCESS_SHARE, table=table,
        label=f"continue the sequence of {new_column}")


def assignments(columns_to_expressions):
    """``"a" = <expr>, "b" = <expr>`` for an UPDATE's SET list (the expressions are SQL as given)."""
    return ", ".join(f"{q(column)} = {expression}" for column, expression in columns_to_expressions)


# -- constraints --------------------------------------------------------------


def add_check_not_valid(table, name, condition):
    """CHECK ... NOT VALID: instant; only rows written from now on are checked."""
    return _alter(table, f"ADD CONSTRAINT {q(name)} CHECK ({condition}) NOT VALID", label=f"check {name} NOT VALID",
                  skip_if=checks.ConstraintExists(table, name))


def add_constraint_not_valid(table, name, definition, target=None):
    """A constraint from its definition (``pg_get_constraintdef``), NOT VALID: instant."""
    lock = Lock.SHARE_ROW_EXCLUSIVE if target else Lock.ACCESS_EXCLUSIVE
    return _alter(table, f"ADD CONSTRAINT {q(name)} {definition} NOT VALID", label=f"constraint {name} NOT VALID",
                  lock=lock, skip_if=checks.ConstraintExists(table, name),
                  also_locks=((target, Lock.SHARE_ROW_EXCLUSIVE),) if target else ())


def add_foreign_key_not_valid(django_statement, table, name, target):
    """Django's own ``ADD CONSTRAINT ... FOREIGN KEY`` (name, ON DELETE, deferral), NOT VALID: instant.

    It takes SHARE ROW EXCLUSIVE on both tables for that instant; the scan
    of the existing rows happens in ``validate_constraint``.
    """
    return Statement(f"{django_statement} NOT VALID", lock=Lock.SHARE_ROW_EXCLUSIVE, table=table,
                     label=f"foreign key {name} NOT VALID", skip_if=checks.ConstraintExists(table, name),
                     also_locks=((target, Lock.SHARE_ROW_EXCLUSIVE),))


def validate_constraint(table, name, on_error=()):
    """VALIDATE CONSTRAINT: scans under SHARE UPDATE EXCLUSIVE, reads and writes continue."""
    return Statement(f"ALTER TABLE {q(table)} VALIDATE CONSTRAINT {q(name)}", lock=Lock.SHARE_UPDATE_EXCLUSIVE,
                     table=table, how=How.CONCURRENT, label=f"validate {name} (reads and writes continue)",
                     skip_if=~checks.ConstraintExists(table, name) | checks.ConstraintValidated(table, name),
                     on_error=tuple(on_error), validates=name)


def drop_constraint(table, name):
    return _alter(table, f"DROP CONSTRAINT IF EXISTS {q(name)}", label=f"drop constraint {name}",
                  skip_if=~checks.ConstraintExists(table, name))


def drop_constraint_strict(table, name):
    """DROP CONSTRAINT without IF EXISTS, for swaps that must fail loudly when it is missing."""
    return _alter(table, f"DROP CONSTRAINT {q(name)}", label=f"drop constraint {name}")


def rename_constraint(table, old, new):
    return _alter(table, f"RENAME CONSTRAINT {q(old)} TO {q(new)}", label=f"rename constraint {old} to {new}")


def add_unique_using_index(table, name, index, deferrable=""):
    """ADD CONSTRAINT ... UNIQUE USING INDEX: instant, the index was built concurrently before."""
    return _alter(table, f"ADD CONSTRAINT {q(name)} UNIQUE USING INDEX {q(index)}{deferrable}",
                  label=f"attach {index} as a constraint", skip_if=checks.ConstraintExists(table, name))


def add_primary_key_using_index(table, name, index):
    return _alter(table, f"ADD CONSTRAINT {q(name)} PRIMARY KEY USING INDEX {q(index)}",
                  label=f"attach {index} as the primary key")


# -- indexes ------------------------------------------------------------------


def create_index_concurrently(sql, name, table, on_error=()):
    """A ``CREATE [UNIQUE] INDEX CONCURRENTLY`` statement (Django's, or ``index_definition``'s).

    SHARE UPDATE EXCLUSIVE: reads and writes continue. The runner skips a
    valid index of that name and rebuilds an invalid one.
    """
    return Statement(str(sql), lock=Lock.SHARE_UPDATE_EXCLUSIVE, table=table, how=How.CONCURRENT, index=name,
                     label=f"index {name} concurrently", on_error=tuple(on_error))


def concurrently(create_index_sql):
    """Django's ``CREATE [UNIQUE] INDEX`` text (``UniqueConstraint.create_sql``) made CONCURRENTLY."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX CONCURRENTLY ", str(create_index_sql), count=1)


def index_definition(table, name, columns, *, unique=False, predicate=None, nulls_not_distinct=False):
    """``CREATE [UNIQUE] INDEX CONCURRENTLY`` text for plain columns (quoted here)."""
    return (f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {q(name)} ON {q(table)} "
            f"({', '.join(q(column) for column in columns)})"
            + (" NULLS NOT DISTINCT" if nulls_not_distinct else "")
            + (f" WHERE {predicate}" if predicate else ""))


def drop_index_concurrently(name, table=None):
    return Statement(f"DROP INDEX CONCURRENTLY IF EXISTS {q(name)}", lock=Lock.SHARE_UPDATE_EXCLUSIVE, table=table,
                     how=How.CONCURRENT, label=f"drop index {name} concurrently",
                     skip_if=~checks.IndexExists(name), drops_index=name)


def drop_index(name, table):
    """Plain DROP INDEX: ACCESS EXCLUSIVE on the table for an instant (inside a bounded transaction)."""
    return Statement(f"DROP INDEX IF EXISTS {q(name)}", lock=Lock.ACCESS_EXCLUSIVE, table=table,
                     label=f"drop index {name}", skip_if=~checks.IndexExists(name))


def rename_index(old, new, table=None):
    return Statement(f"ALTER INDEX IF EXISTS {q(old)} RENAME TO {q(new)}", lock=Lock.ACCESS_EXCLUSIVE, table=table,
                     label=f"rename index {old} to {new}")


# -- tables and views ---------------------------------------------------------


def rename_table(old, new):
    return Statement(f"ALTER TABLE {q(old)} RENAME TO {q(new)}", lock=Lock.ACCESS_EXCLUSIVE, table=old,
                     label=f"rename table {old} to {new}")


def create_view(name, table, replace=False):
    """A view of every column of ``table``: automatically updatable, so old code keeps writing through it."""
    verb = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW"
    return Statement(f"{verb} {q(name)} AS SELECT * FROM {q(table)}", lock=Lock.ACCESS_SHARE, table=table,
                     label=f"view {name} over {table}")


def drop_view(name):
    return Statement(f"DROP VIEW IF EXISTS {q(name)}", lock=Lock.ACCESS_EXCLUSIVE, table=name,
                     label=f"drop view {name}", skip_if=~checks.ViewExists(name))


def drop_table(name):
    return Statement(f"DROP TABLE IF EXISTS {q(name)}", lock=Lock.ACCESS_EXCLUSIVE, table=name,
                     label=f"drop table {name}", skip_if=~checks.TableExists(name))


def lock_table(table):
    """LOCK TABLE ... IN ACCESS EXCLUSIVE MODE: take the lock up front, bounded by lock_timeout."""
    return Statement(f"LOCK TABLE {q(table)} IN ACCESS EXCLUSIVE MODE", lock=Lock.ACCESS_EXCLUSIVE, table=table,
                     label=f"lock {table}")


def statement_budget(milliseconds):
    """``statement_timeout`` for the rest of the transaction (``SET LOCAL``, pooler-safe)."""
    return Statement("SELECT set_config('statement_timeout', %s, true)", (f"{int(milliseconds)}ms",),
                     lock=Lock.NONE, label="statement budget")


# -- partitioned tables ---------------------------------------------------------
#
# PostgreSQL refuses CONCURRENTLY, UNIQUE USING INDEX and (before 18) a NOT VALID
# foreign key on a partitioned table; ``pg.partitions`` puts these together into
# the sequences that reach the same schema without a long lock. ``table`` may be
# a schema-qualified, already quoted name (``"app"."item_p3"``): ``q`` leaves it
# as it is.


def lock_partition_tree(table, partitions, lock):
    """Lock a partitioned table, then all its partitions ``NOWAIT``, in ``lock``'s mode: before a bounded step.

    A statement on a partitioned table locks the parent, then each partition;
    ``lock_timeout`` bounds each wait, so one waiting for a partition that
    someone else holds (autovacuum, a query on the partition) would hold the
    parent meanwhile, once per such partition. Locked first, the parent is
    waited for once (bounded), and a partition held by anyone fails the
    attempt at once (SQLSTATE 55P03, retried like a lock timeout).
    ``partitions``: qualified, quoted names.
    """
    mode = lock.pg_name
    statements = [Statement(f"LOCK TABLE ONLY {q(table)} IN {mode} MODE", lock=lock, table=table,
                            label=f"lock {table}")]
    if partitions:
        statements.append(Statement(f"LOCK TABLE ONLY {', '.join(partitions)} IN {mode} MODE NOWAIT", lock=lock,
                                    table=table, label=f"lock the partitions of {table} (NOWAIT)",
                                    also_locks=tuple((partition, lock) for partition in partitions)))
    return statements


def create_index_on_only(table, definition, *, name=None, unique=False):
    """``CREATE [UNIQUE] INDEX [IF NOT EXISTS name] ON ONLY table <definition>``: the parent alone, instant.

    SHARE on the parent only, for a catalog change: the parent holds no rows
    and the index covers no partition yet (it is INVALID until each
    partition's index is attached). ``definition``: ``USING btree (...)`` and
    what follows, as SQL. Without ``name`` PostgreSQL names it (a
    sub-partitioned partition's index, named as a plain parent index's copy).
    """
    named = f"IF NOT EXISTS {q(name)} " if name else ""
    return Statement(f"CREATE {'UNIQUE ' if unique else ''}INDEX {named}ON ONLY {q(table)} {definition.strip()}",
                     lock=Lock.SHARE, table=table, label=f"index {name or ''} on {table} alone".replace("  ", " "),
                     skip_if=checks.IndexExists(name) if name else None)


def create_partition_index_concurrently(partition, definition, *, unique=False):
    """``CREATE [UNIQUE] INDEX CONCURRENTLY ON partition <definition>``, unnamed: SHARE UPDATE EXCLUSIVE.

    PostgreSQL names it as it names a plain parent index's copy on that
    partition, so the end state is plain Django's. ``pg.partitions`` finds it
    by its definition (re-use when valid, drop when a failed build left it
    INVALID).
    """
    return Statement(f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY ON {q(partition)} {definition.strip()}",
                     lock=Lock.SHARE_UPDATE_EXCLUSIVE, table=partition, how=How.CONCURRENT,
                     label=f"index {partition} concurrently")


def attach_index(parent_index, child_index, partition):
    """``ALTER INDEX parent ATTACH PARTITION child``: instant.

    ACCESS EXCLUSIVE on the partition's index (every query planned on that
    partition waits for it, for an instant), SHARE UPDATE EXCLUSIVE on the
    parent index, ACCESS SHARE on both tables. The parent index turns valid
    once every partition's index is attached.
    """
    return Statement(f"ALTER INDEX {q(parent_index)} ATTACH PARTITION {q(child_index)}", lock=Lock.ACCESS_EXCLUSIVE,
                     table=partition, label=f"attach {child_index} to {parent_index}")


def add_unique(table, name, columns, *, nulls_not_distinct=False, deferrable=""):
    """``ADD CONSTRAINT name UNIQUE (columns)``: on a partitioned table whose partitions have it, instant.

    The parent's constraint attaches each partition's matching unique
    constraint instead of building an index; only ever run after
    ``pg.partitions`` gave every partition one. ACCESS EXCLUSIVE on the tree.
    """
    return _alter(table, f"ADD CONSTRAINT {q(name)} UNIQUE ({', '.join(q(column) for column in columns)})"
                  f"{' NULLS NOT DISTINCT' if nulls_not_distinct else ''}{deferrable}",
                  label=f"unique constraint {name}", skip_if=checks.ConstraintExists(table, name))


def on_partition(django_statement, partition):
    """Django's ``ALTER TABLE <table> ...`` statement (a foreign key), as it is, on one partition of the table."""
    return re.sub(rf"^ALTER TABLE (?:ONLY )?{QUALIFIED} ", lambda _: f"ALTER TABLE {q(partition)} ",
                  " ".join(str(django_statement).split()), count=1, flags=re.I)


def add_foreign_key(django_statement, table, name, target=None):
    """Django's own ``ADD CONSTRAINT ... FOREIGN KEY`` as it is (validated).

    Only on a partitioned table whose partitions all have it validated
    (PostgreSQL before 18): the parent's constraint then attaches theirs
    without a scan. SHARE ROW EXCLUSIVE on both tables, for an instant.
    """
    return Statement(str(django_statement), lock=Lock.SHARE_ROW_EXCLUSIVE, table=table, label=f"foreign key {name}",
                     skip_if=checks.ConstraintExists(table, name),
                     also_locks=((target, Lock.SHARE_ROW_EXCLUSIVE),) if target else ())


# -- triggers and functions ---------------------------------------------------


def create_trigger(trigger_sql, table, name):
    """pgtrigger's compiled install SQL (function, trigger, comment): ACCESS EXCLUSIVE for an instant.

    CREATE TRIGGER alone takes SHARE ROW EXCLUSIVE, but pgtrigger's script
    first runs ``DROP TRIGGER IF EXISTS``, which takes ACCESS EXCLUSIVE on the
    table even when there is nothing to drop.
    """
    return Statement(trigger_sql, lock=Lock.ACCESS_EXCLUSIVE, table=table, label=f"install trigger {name}",
                     skip_if=checks.TriggerExists(table, name))


def drop_trigger(trigger_sql, table, name):
    """pgtrigger's compiled DROP TRIGGER IF EXISTS: instant, but ACCESS EXCLUSIVE.

    CREATE TRIGGER takes SHARE ROW EXCLUSIVE; dropping one takes ACCESS
    EXCLUSIVE (PostgreSQL's RemoveTriggerById), so it is declared as that.
    """
    return Statement(trigger_sql, lock=Lock.ACCESS_EXCLUSIVE, table=table, label=f"drop trigger {name}")


def drop_function(name):
    return Statement(f"DROP FUNCTION IF EXISTS {q(name)}()", lock=Lock.NONE, label=f"drop function {name}")


# -- archives (pg.archive) ----------------------------------------------------
# What contract archives instead of dropping: a column stripped of what hangs
# on it and renamed, a table moved to the archive schema. Catalog changes
# only (no row is read or rewritten); the names come from the catalog
# (``pg.archive_ddl``), qualified where the object lives in another schema.


def qualified(schema, name):
    """``"schema"."name"``: a name in a given schema (``q`` leaves it as it is)."""
    return f"{q(schema)}.{q(name)}"


def drop_expression(table, column):
    """DROP EXPRESSION: a stored generated column becomes a plain one keeping its values; instant."""
    return _alter(table, f"ALTER COLUMN {q(column)} DROP EXPRESSION IF EXISTS",
                  label=f"make {column} a plain column")


def set_schema(table, schema, label=None):
    """SET SCHEMA: the table moves with its indexes, constraints and owned sequences; no data page is touched."""
    return _alter(table, f"SET SCHEMA {q(schema)}", label=label or f"move {table} to schema {schema}")


def rename_sequence(old, new, table=None):
    """ALTER SEQUENCE ... RENAME: ACCESS EXCLUSIVE on the sequence, instant."""
    return Statement(f"ALTER SEQUENCE IF EXISTS {q(old)} RENAME TO {q(new)}", lock=Lock.ACCESS_EXCLUSIVE, table=table,
                     label=f"rename sequence {old} to {new}")


def create_archive_table(name, pk_type, value_type):
    """The ``(pk, value)`` table of a copy-mode column archive: a new table, no lock on an existing one."""
    return Statement(f"CREATE TABLE IF NOT EXISTS {q(name)} (pk {pk_type} PRIMARY KEY, value {value_type})",
                     lock=Lock.NONE, label=f"create {name}", skip_if=checks.TableExists(name))


def index_from_definition(definition, name):
    """``pg_get_indexdef`` text as ``CREATE [UNIQUE] INDEX CONCURRENTLY <name> ON ...`` (another name, same index)."""
    match = re.match(r'CREATE (UNIQUE )?INDEX (?:"(?:[^"]|"")+"|\S+) ON (.*)$', definition, re.S)
    return f"CREATE {match.group(1) or ''}INDEX CONCURRENTLY {q(name)} ON {match.group(2)}"


# -- rename windows (pg.views, pg.windows) --------------------------------------
#
# A window's statements name its view and base table on purpose
# (``as_written``). They always run in one transaction that renames the table
# or drops the view first, so the view they create is a new object: what is
# done to it afterwards (owner, privileges, comments) locks nothing anyone
# else can wait for, and is declared ``Lock.NONE``.


def _window(statement):
    return statement.but(as_written=True)


def window_rename_table(old, new):
    """The table steps aside for its view (or takes its name back): ACCESS EXCLUSIVE, instant."""
    return _window(rename_table(old, new))


def window_rename_column(base, old, new):
    """The base table's column takes its new name: ACCESS EXCLUSIVE on the base table, instant."""
    return _window(rename_column(base, old, new))


def window_drop_view(view):
    """DROP VIEW of a window, never CASCADE: a view someone built on it makes this fail loudly.

    ACCESS EXCLUSIVE on the view, instant.
    """
    return _window(drop_view(view))


def window_view(view, base, columns, aliases, *, security_invoker):
    """CREATE VIEW of a window: ``columns`` of ``base``, then each ``(alias, column)`` a second time.

    Reads ``base`` (ACCESS SHARE); the view is new. ``security_invoker``
    (PostgreSQL 15+) checks privileges and row-level security for the
    querying role, as on the table.
    """
    select = [q(column) for column in columns] + [f"{q(column)} AS {q(alias)}" for alias, column in aliases]
    options = " WITH (security_invoker = true)" if security_invoker else ""
    return Statement(f"CREATE VIEW {q(view)}{options} AS SELECT {', '.join(select)} FROM {q(base)}",
                     lock=Lock.ACCESS_SHARE, table=base, label=f"view {view} over {base}", as_written=True)


def _role(name):
    return "PUBLIC" if name in (None, "", "PUBLIC") else q(name)


def window_view_extras(view, marker, *, owner=None, grants=(), column_grants=(), column_comments=()):
    """What a view does not inherit from its table: owner, privileges, column comments; then the marker.

    Catalog changes on the view just created (``Lock.NONE``). ``grants``:
    ``(grantee, privilege, grantable)``; ``column_grants``: ``(column,
    grantee, privilege, grantable)`` with ``column`` a view column;
    ``column_comments``: ``(view column, comment)``; ``marker``: the view's
    comment (``pg.views.marker``).
    """
    def new_view(text, label, params=()):
        return Statement(text, tuple(params), lock=Lock.NONE, label=label, as_written=True)

    statements = []
    if owner:
        statements.append(new_view(f"ALTER VIEW {q(view)} OWNER TO {_role(owner)}", f"owner of {view}"))
    for grantee, privilege, grantable in grants:
        statements.append(new_view(f"GRANT {privilege} ON {q(view)} TO {_role(grantee)}"
                                   + (" WITH GRANT OPTION" if grantable else ""), f"grant {privilege} on {view}"))
    for column, grantee, privilege, grantable in column_grants:
        statements.append(new_view(f"GRANT {privilege} ({q(column)}) ON {q(view)} TO {_role(grantee)}"
                                   + (" WITH GRANT OPTION" if grantable else ""),
                                   f"grant {privilege} on {view}.{column}"))
    for column, comment in column_comments:
        statements.append(new_view(f"COMMENT ON COLUMN {q(view)}.{q(column)} IS %s", f"comment on {view}.{column}",
                                   (comment,)))
    statements.append(new_view(f"COMMENT ON VIEW {q(view)} IS %s", f"mark {view} as a rename window", (marker,)))
    return statements
