"""Catalog look-ups that make operations idempotent.

Every operation asks the catalog what is already there before it acts, so a
run killed at any point can simply be run again. Names are passed as query
parameters (never pasted into SQL) and resolved in the current search_path.
"""


def _one(connection, sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def table_exists(connection, table):
    return _one(connection, "SELECT to_regclass(%s) IS NOT NULL", [connection.ops.quote_name(table)])[0]


def column_info(connection, table, column):
    """``{"nullable": bool, "type": str, "default": str|None}`` or None if absent."""
    row = _one(
        connection,
        """
        SELECT NOT a.attnotnull, format_type(a.atttypid, a.atttypmod),
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute a
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = to_regclass(%s) AND a.attname = %s
           AND a.attnum > 0 AND NOT a.attisdropped
        """,
        [connection.ops.quote_name(table), column],
    )
    if row is None:
        return None
    return {"nullable": row[0], "type": row[1], "default": row[2]}


def column_exists(connection, table, column):
    return column_info(connection, table, column) is not None


def index_state(connection, name):
    """None if no such index, else ``{"valid": bool, "table": str, "unique": bool}``."""
    row = _one(
        connection,
        """
        SELECT i.indisvalid, t.relname, i.indisunique
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_class t ON t.oid = i.indrelid
         WHERE c.oid = to_regclass(%s)
        """,
        [connection.ops.quote_name(name)],
    )
    if row is None:
        return None
    return {"valid": row[0], "table": row[1], "unique": row[2]}


def constraint_state(connection, table, name):
    """None if absent, else ``{"validated": bool, "type": str}`` (type: c/f/u/p/x)."""
    row = _one(
        connection,
        """
        SELECT convalidated, contype
          FROM pg_constraint
         WHERE conrelid = to_regclass(%s) AND conname = %s
        """,
        [connection.ops.quote_name(table), name],
    )
    if row is None:
        return None
    return {"validated": row[0], "type": row[1]}


def trigger_exists(connection, table, name):
    row = _one(
        connection,
        """
        SELECT 1 FROM pg_trigger
         WHERE tgrelid = to_regclass(%s) AND tgname = %s AND NOT tgisinternal
        """,
        [connection.ops.quote_name(table), name],
    )
    return row is not None


def primary_key_columns(connection, table):
    """Column names of the table's primary key, in key order ([] if none)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.attname
              FROM pg_index i
              JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
             ORDER BY k.ord
            """,
            [connection.ops.quote_name(table)],
        )
        return [row[0] for row in cursor.fetchall()]


def view_exists(connection, name):
    row = _one(
        connection,
        "SELECT 1 FROM pg_class WHERE oid = to_regclass(%s) AND relkind = 'v'",
        [connection.ops.quote_name(name)],
    )
    return row is not None


def estimated_rows(connection, table):
    """Planner estimate of the row count (cheap; -1 when never analyzed)."""
    row = _one(
        connection,
        "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
        [connection.ops.quote_name(table)],
    )
    return -1 if row is None else int(row[0])


def referencing_keys(connection, table, column):
    """``[(table, column, constraint)]`` of single-column FKs pointing at ``table.column``."""
    return [row[:3] for row in referencing_key_definitions(connection, table, column)]


def referencing_key_definitions(connection, table, column):
    """As ``referencing_keys``, plus each constraint's definition (ON DELETE, DEFERRABLE, ...)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT r.relname, a.attname, c.conname, pg_get_constraintdef(c.oid)
              FROM pg_constraint c
              JOIN pg_class r ON r.oid = c.conrelid
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
              JOIN pg_attribute t ON t.attrelid = c.confrelid AND t.attnum = c.confkey[1]
             WHERE c.contype = 'f' AND c.confrelid = %s::regclass AND t.attname = %s
               AND cardinality(c.conkey) = 1
             ORDER BY 1, 2
            """,
            [connection.ops.quote_name(table), column],
        )
        return cursor.fetchall()


def identity_kind(connection, table, column):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attidentity FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            [connection.ops.quote_name(table), column],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def column_indexes(connection, table, columns):
    """Indexes of ``table`` (other than its primary key) that include any of ``columns``.

    ``[(index name, unique constraint name or None, unique, [column names], predicate)]``;
    expression indexes are left out (their definitions cannot be moved to
    another column by name) and reported by ``expression_indexes``.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            r"""
            SELECT i.relname, c.conname, x.indisunique,
                   ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(attnum, n)
                         JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                         ORDER BY k.n)::text[],
                   pg_get_expr(x.indpred, x.indrelid)
              FROM pg_index x
              JOIN pg_class i ON i.oid = x.indexrelid
              LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
                                        AND c.contype = 'u'
             WHERE x.indrelid = %s::regclass AND NOT x.indisprimary AND x.indexprs IS NULL
               AND i.relname NOT LIKE '%%\_smtmp\_%%' AND i.relname NOT LIKE '%%\_sm'
             ORDER BY 1
            """,
            [connection.ops.quote_name(table)],
        )
        rows = cursor.fetchall()
    return [(name, constraint, unique, list(cols), predicate) for name, constraint, unique, cols, predicate in rows
            if set(cols) & set(columns)]


def primary_key_name(connection, table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                       [connection.ops.quote_name(table)])
        row = cursor.fetchone()
    return row[0] if row else None
