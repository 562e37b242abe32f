"""How big each table is, from the planner's statistics: one read-only catalog query.

``rehearse`` scales what it measured on a scratch database to production size
by each table's ratio of rows. Counting rows on a production database would be
a full scan of every table; ``pg_class.reltuples`` is the planner's estimate,
kept current by autovacuum/ANALYZE, and costs nothing to read. A table never
analysed has no estimate (``reltuples`` -1 on PostgreSQL 14+); its row count
is then inferred from its size and the scratch copy's bytes per row, and the
basis says so. A partitioned table counts the rows of its partitions.
"""

from dataclasses import dataclass

_USER = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
         "AND n.nspname NOT LIKE 'pg_temp%'")

TABLES_SQL = f"""
    SELECT n.nspname, c.relname,
           CASE WHEN c.relkind = 'p' THEN (SELECT sum(greatest(p.reltuples, 0)) FROM pg_partition_tree(c.oid) t
                                           JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf)
                ELSE c.reltuples END,
           CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_relation_size(t.relid)), 0)
                                           FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
                ELSE pg_relation_size(c.oid) END,
           CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)
                                           FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
                ELSE pg_total_relation_size(c.oid) END,
           CASE WHEN c.relkind = 'p' THEN (SELECT bool_and(p.reltuples >= 0) FROM pg_partition_tree(c.oid) t
                                           JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf)
                ELSE c.reltuples >= 0 END
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER}"""


@dataclass
class TableSize:
    rows: float
    bytes: int
    total_bytes: int
    #: False when the table was never analysed (rows is then 0 and unknown).
    analysed: bool


def label(schema, name):
    return name if schema == "public" else f"{schema}.{name}"


def table_sizes(cursor):
    """``{table: TableSize}`` for every user table of the database ``cursor`` reads."""
    cursor.execute(TABLES_SQL)
    return {label(schema, name): TableSize(max(float(rows or 0), 0.0), int(size or 0), int(total or 0), bool(analysed))
            for schema, name, rows, size, total, analysed in cursor.fetchall()}


def settings_of(cursor, names=("maintenance_work_mem", "work_mem", "server_version_num")):
    """``{name: value in bytes (memory) or as text}`` from ``pg_settings``."""
    cursor.execute("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", [list(names)])
    units = {"kB": 1024, "8kB": 8192, "MB": 1 << 20, "B": 1}
    return {name: int(value) * units[unit] if unit in units else value for name, value, unit in cursor.fetchall()}


def user_tables(cursor):
    """``[(schema, table)]`` of every user table (partitioned parents, not their partitions)."""
    cursor.execute(f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   f"WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {_USER}")
    return [(schema, name) for schema, name in cursor.fetchall()]


def analyze(cursor, quote_name, tables):
    """ANALYZE each of ``tables`` (labels as ``table_sizes`` gives them), for the planner's row estimates.

    Only ever run on the scratch database, for tables a copy brought over
    without statistics. ANALYZE takes SHARE UPDATE EXCLUSIVE: reads and
    writes continue.
    """
    for table in tables:
        cursor.execute(f"ANALYZE {'.'.join(quote_name(part) for part in table.split('.'))}")
