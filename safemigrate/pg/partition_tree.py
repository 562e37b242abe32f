"""A partitioned table's shape, read from the catalog, and how to lock it whole.

Kept apart from ``pg.partitions`` (the safe sequences): the runner, the execution
path and the backfill engine need only this part.
"""

from . import sql
from .catalog import is_partitioned
from .locks import Lock

#: SQL for the schema-qualified name of ``pg_class c`` in ``pg_namespace n``, always quoted
#: (``format('%I.%I')`` quotes only where needed, and the DDL builders quote what is not
#: quoted yet: ``public.item_p0`` would become one identifier).
QUALIFIED_NAME = """'"' || replace(n.nspname, '"', '""') || '"."' || replace(c.relname, '"', '""') || '"'"""


def _rows(connection, query, params=()):
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def tree(connection, table):
    """Every partition under ``table`` (not the table itself), parents before their children.

    Dicts: ``oid``, ``qualified`` (schema-qualified, quoted), ``name``, ``schema``,
    ``parent`` (oid), ``leaf`` (False for a sub-partitioned partition), ``level``.
    """
    rows = _rows(connection, f"""
        SELECT c.oid, {QUALIFIED_NAME}, c.relname, n.nspname, t.parentrelid, t.isleaf,
               t.level
          FROM pg_partition_tree(to_regclass(%s)) t
          JOIN pg_class c ON c.oid = t.relid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE t.level > 0
         ORDER BY t.level, c.relname
    """, [connection.ops.quote_name(table)])
    keys = ("oid", "qualified", "name", "schema", "parent", "leaf", "level")
    return [dict(zip(keys, row)) for row in rows]


def key_columns(connection, table):
    """Partition key columns of ``table`` and of every sub-partitioned partition (None for expressions)."""
    rows = _rows(connection, """
        SELECT DISTINCT CASE WHEN k.attnum = 0 THEN NULL ELSE a.attname END
          FROM pg_partition_tree(to_regclass(%s)) t
          JOIN pg_partitioned_table p ON p.partrelid = t.relid
          CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
          LEFT JOIN pg_attribute a ON a.attrelid = t.relid AND a.attnum = k.attnum
    """, [connection.ops.quote_name(table)])
    return [row[0] for row in rows]


def describe(connection, table):
    """``"list-partitioned on (region), 8 partitions"``, for messages."""
    rows = _rows(connection, """
        SELECT pg_get_partkeydef(c.oid), (SELECT count(*) FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
          FROM pg_class c WHERE c.oid = to_regclass(%s)
    """, [connection.ops.quote_name(table)])
    if not rows:
        return "partitioned"
    key, count = rows[0]
    strategy, _, columns = (key or "").partition(" ")
    return f"{strategy.lower()}-partitioned on {columns}, {count} partition{'s' if count != 1 else ''}"


def partitioned_tables(connection):
    """``{table: {"keys": [...], "description": "..."}}`` of the partitioned tables on the search path.

    For the linter: it reads migration files, and only the database knows which of
    their tables are partitioned.
    """
    rows = _rows(connection, """
        SELECT c.relname FROM pg_class c
         WHERE c.relkind = 'p' AND pg_table_is_visible(c.oid) AND NOT c.relispartition
    """)
    return {name: {"keys": key_columns(connection, name), "description": describe(connection, name)}
            for (name,) in rows}


# -- taking a partitioned table's lock without holding it while waiting ----------------------------------


def tree_lock(connection, table, lock):
    """``pg.sql.lock_partition_tree`` for a bounded step on ``table`` taking ``lock`` ([] unless partitioned).

    ``lock_timeout`` bounds each lock *wait*, not a statement's: an ``ALTER TABLE`` on
    a partitioned table takes the parent's lock, then each partition's, and while it
    waits for a partition held by someone who does not hold the parent (autovacuum,
    ``ANALYZE``, a query on the partition itself) it already holds the parent, so the
    application's queries queue behind it for up to ``lock_timeout`` once per such
    partition, on top of the wait for the parent. So the parent is locked first, in the
    step's own declared mode, with the usual bounded wait; once it is granted no query
    that goes through the parent holds anything, and the partitions are locked
    ``NOWAIT``: a partition held by anyone else fails the attempt at once (SQLSTATE
    55P03, retried like any lock timeout) instead of holding the parent while it waits.
    """
    if not table or lock is Lock.NONE or not is_partitioned(connection, table):
        return []
    return sql.lock_partition_tree(table, [p["qualified"] for p in tree(connection, table)], lock)


def lock_tree(connection, table, lock=Lock.ACCESS_EXCLUSIVE):
    """Run ``tree_lock`` in the caller's transaction (the execution path's undeclared statements)."""
    with connection.cursor() as cursor:
        for statement in tree_lock(connection, table, lock):
            cursor.execute(statement.sql, statement.params or None)


def batch_key(connection, table, primary_key):
    """The column a backfill paginates on, for a partitioned table whose key is composite.

    A partitioned table's primary key must contain the partition key, so a Django model
    ``id`` often sits in ``PRIMARY KEY (id, region)``. Batches are cut on ranges of the
    first key column: every partition's key index leads with it, and a range takes all
    rows of its boundary value, so a value repeated across partitions is never split.
    """
    if len(primary_key) > 1 and is_partitioned(connection, table):
        return primary_key[0]
    return None
