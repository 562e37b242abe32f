"""Catalog look-ups that make operations idempotent.

Every operation asks the catalog what is already there before it acts, so a
run killed at any point can simply be run again. Names are passed as query
parameters (never pasted into SQL) and resolved the way PostgreSQL resolves the
unqualified names in the statements that follow: tables through ``search_path``
(``to_regclass``, which finds the first schema on the path holding the name), an
index through its table (index names are unique per schema, and an index belongs
to the schema of its table), constraints and triggers through the table they are
on. Nothing here matches a bare ``relname`` or ``information_schema.table_name``:
with an application schema first on the path and a same-named table in a schema
after it, those find both (docs/pages/roles.md).
A table in a rename window (``pg.windows``) is looked up in its base table:
its name is a view then, which has no indexes, constraints or triggers.
"""

from . import views


def relation(connection, table):
    """The quoted name to look ``table`` up by: its base table while a rename window is open."""
    return connection.ops.quote_name(resolve(connection, table))


_WINDOWS_SQL = """
    SELECT c.relname, d.description
      FROM pg_class c
      JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
     WHERE c.relkind = 'v' AND d.description LIKE %s AND pg_table_is_visible(c.oid)
"""


def rename_windows(connection):
    """``{view name: pg.views.Window}`` for every rename window visible in the search path."""
    with connection.cursor() as cursor:
        cursor.execute(_WINDOWS_SQL, [views.MARKER_PREFIX.replace("_", r"\_") + "%"])
        rows = cursor.fetchall()
    found = {}
    for name, comment in rows:
        parsed = views.parse_marker(comment)
        if parsed:
            found[name] = views.Window(name, parsed[0], list(parsed[1]))
    return found


def rename_window(connection, name):
    """The rename window (``pg.views.Window``) whose view is called ``name``, or None."""
    if not name or connection.vendor != "postgresql":
        return None
    row = _one(connection, "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c "
                           "WHERE c.oid = to_regclass(%s) AND c.relkind = 'v'", [connection.ops.quote_name(name)])
    parsed = views.parse_marker(row[0]) if row else None
    return views.Window(name, parsed[0], list(parsed[1])) if parsed else None


def resolve(connection, name):
    """The base table when ``name`` is a rename window's view, else ``name`` itself."""
    window = rename_window(connection, name)
    return window.base if window else name


def _one(connection, sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def relation_exists(connection, sql_name):
    """True when ``sql_name`` (SQL text: quoted, maybe schema-qualified) names a relation."""
    return _one(connection, "SELECT to_regclass(%s) IS NOT NULL", [sql_name])[0]


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
        [relation(connection, table), column],
    )
    if row is None:
        return None
    return {"nullable": row[0], "type": row[1], "default": row[2]}


def column_comment(connection, table, column):
    """The comment on ``table``.``column`` (``COMMENT ON COLUMN``), or None."""
    row = _one(connection, "SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                           "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0 "
                           "AND NOT a.attisdropped", [relation(connection, table), column])
    return row[0] if row else None


def column_exists(connection, table, column):
    return column_info(connection, table, column) is not None


def index_state(connection, name):
    """None if no such index, else ``{"valid": bool, "table": str, "unique": bool, "partitioned": bool}``.

    Index names are unique per schema, not per search path: the index counts only
    when its table is the one the table's unqualified name resolves to
    (``pg_table_is_visible``). A same-named index on a same-named table in a schema
    later on the path (a leftover in ``public`` after a move to an application
    schema) belongs to another table, and must not make a build look done.
    """
    row = _one(
        connection,
        """
        SELECT i.indisvalid, t.relname, i.indisunique, c.relkind = 'I'
          FROM pg_class c
          JOIN pg_index i ON i.indexrelid = c.oid
          JOIN pg_class t ON t.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = %s AND c.relkind IN ('i', 'I') AND pg_table_is_visible(t.oid)
         ORDER BY array_position(current_schemas(true), n.nspname::text) NULLS LAST
         LIMIT 1
        """,
        [name],
    )
    if row is None:
        return None
    return {"valid": row[0], "table": row[1], "unique": row[2], "partitioned": row[3]}


#: ``pg_constraint.confdeltype``, a foreign key's ON DELETE action, in words.
ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


def constraint_state(connection, table, name):
    """None if absent, else ``{"validated": bool, "type": str, "on_delete": str | None}``.

    ``type`` is ``pg_constraint.contype`` (c/f/u/p/x); ``on_delete`` is a
    foreign key's ``confdeltype`` (a key of ``ON_DELETE``), None for other kinds.
    """
    row = _one(
        connection,
        """
        SELECT convalidated, contype, CASE WHEN contype = 'f' THEN confdeltype END
          FROM pg_constraint
         WHERE conrelid = to_regclass(%s) AND conname = %s
        """,
        [relation(connection, table), name],
    )
    if row is None:
        return None
    return {"validated": row[0], "type": row[1], "on_delete": row[2]}


def trigger_exists(connection, table, name):
    row = _one(
        connection,
        """
        SELECT 1 FROM pg_trigger
         WHERE tgrelid = to_regclass(%s) AND tgname = %s AND NOT tgisinternal
        """,
        [relation(connection, table), name],
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
            [relation(connection, table)],
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
    """Planner estimate of the row count (cheap; -1 when never analyzed).

    A partitioned table holds no rows itself: its estimate is the sum of its
    partitions' (those never analyzed count as 0, unless all are).
    """
    row = _one(
        connection,
        """
        SELECT CASE WHEN c.relkind = 'p' THEN
                    (SELECT CASE WHEN bool_and(p.reltuples < 0) THEN -1
                                 ELSE sum(greatest(p.reltuples, 0)) END
                       FROM pg_partition_tree(c.oid) tr JOIN pg_class p ON p.oid = tr.relid
                      WHERE tr.isleaf)
               ELSE c.reltuples END::bigint
          FROM pg_class c WHERE c.oid = to_regclass(%s)
        """,
        [relation(connection, table)],
    )
    return -1 if row is None or row[0] is None else int(row[0])


def is_partitioned(connection, table):
    """True for a declaratively partitioned table (``PARTITION BY``), whose rows live in its partitions."""
    row = _one(connection, "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)",
               [relation(connection, table)])
    return bool(row and row[0])


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
            [relation(connection, table), column],
        )
        rows = cursor.fetchall()
    # A referencing table in a rename window is named as the models name it: by its view, not by its base.
    names = {w.base: w.view for w in rename_windows(connection).values()} if rows else {}
    return [(names.get(row[0], row[0]), *row[1:]) for row in rows]


def identity_kind(connection, table, column):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attidentity FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            [relation(connection, table), column],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def column_indexes(connection, table, columns):
    """Indexes of ``table`` (other than its primary key) that include any of ``columns``.

    ``[(index name, unique constraint name or None, unique, [column names], predicate)]``;
    expression indexes are left out. (What goes with a dropped column, to be
    rebuilt elsewhere, is ``dependent_indexes``.)
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
            [relation(connection, table)],
        )
        rows = cursor.fetchall()
    return [(name, constraint, unique, list(cols), predicate) for name, constraint, unique, cols, predicate in rows
            if set(cols) & set(columns)]


def dependent_indexes(connection, table, columns):
    """Indexes of ``table`` (other than its primary key) that go when any of ``columns`` is dropped.

    Not only those with one as a key column: an ``INCLUDE`` column, a column
    an expression or the ``WHERE`` reads ties the index to it too (PostgreSQL
    records those in ``pg_depend``). ``[(index name, constraint name or None,
    constraint kind ('u' unique, 'x' exclusion) or None, deferral clause,
    pg_get_indexdef)]``, by name.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            r"""
            SELECT i.relname, c.conname, c.contype,
                   CASE WHEN c.condeferred THEN ' DEFERRABLE INITIALLY DEFERRED'
                        WHEN c.condeferrable THEN ' DEFERRABLE' ELSE '' END,
                   pg_get_indexdef(x.indexrelid)
              FROM pg_index x
              JOIN pg_class i ON i.oid = x.indexrelid
              LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
                                        AND c.contype IN ('u', 'x')
             WHERE x.indrelid = %s::regclass AND NOT x.indisprimary
               AND i.relname NOT LIKE '%%\_smtmp\_%%' AND i.relname NOT LIKE '%%\_sm'
               AND EXISTS (
                   SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = x.indrelid AND a.attname = ANY (%s) AND a.attnum > 0
                      AND (a.attnum = ANY (x.indkey::int2[])
                           OR EXISTS (SELECT 1 FROM pg_depend d
                                       WHERE d.classid = 'pg_class'::regclass AND d.objid = x.indexrelid
                                         AND d.refclassid = 'pg_class'::regclass AND d.refobjid = x.indrelid
                                         AND d.refobjsubid = a.attnum)))
             ORDER BY 1
            """,
            [relation(connection, table), list(columns)],
        )
        return cursor.fetchall()


def primary_key_name(connection, table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                       [relation(connection, table)])
        row = cursor.fetchone()
    return row[0] if row else None


def null_count(connection, table, column):
    """How many rows of ``table`` hold NULL in ``column`` (a full read: ACCESS SHARE)."""
    qn = connection.ops.quote_name
    return _one(connection, f"SELECT count(*) FROM {qn(table)} WHERE {qn(column)} IS NULL", None)[0]


def rows_where(connection, table, condition, limit=5):
    """Primary keys of up to ``limit`` rows of ``table`` matching the SQL ``condition`` (a read)."""
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        pk = connection.introspection.get_primary_key_column(cursor, table)
        cursor.execute(f"SELECT {qn(pk)} FROM {qn(table)} WHERE {condition} LIMIT {int(limit)}")
        return [row[0] for row in cursor.fetchall()]


def has_rows(connection, table):
    """True when ``table`` holds at least one row (reads one row: ACCESS SHARE)."""
    return _one(connection, f"SELECT EXISTS (SELECT 1 FROM {connection.ops.quote_name(table)})", None)[0]


def foreign_keys_of(connection, table):
    """``[(name, definition)]`` of the foreign keys defined on ``table``, by name."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
            [relation(connection, table)],
        )
        return cursor.fetchall()


def foreign_keys_to(connection, table):
    """``[(referencing table, constraint)]`` of foreign keys of other tables pointing at ``table``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint "
            "WHERE contype = 'f' AND confrelid = to_regclass(%s) AND conrelid <> confrelid",
            [relation(connection, table)],
        )
        return cursor.fetchall()


def trigger_functions(connection, table, prefix):
    """Names of the functions called by ``table``'s triggers whose name starts with ``prefix``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgrelid = to_regclass(%s) AND starts_with(p.proname, %s)",
            [relation(connection, table), prefix],
        )
        return [name for (name,) in cursor.fetchall()]


def named_objects(connection, table, columns=None, exclude_marker="_smtmp_"):
    """``[(name, is_constraint)]`` of ``table``'s constraints and indexes (names without ``exclude_marker``).

    With ``columns``: only the plain indexes that include one of them (not
    unique, not primary, owned by no constraint: an exclusion constraint's
    index is not unique, and renaming it renames the constraint too). Without: every constraint (primary key, unique,
    check, foreign key, exclusion) and every index no constraint owns.
    """
    with connection.cursor() as cursor:
        if columns:
            cursor.execute(
                """
                SELECT i.relname, false FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                 WHERE x.indrelid = to_regclass(%s) AND strpos(i.relname, %s) = 0
                   AND NOT x.indisunique AND NOT x.indisprimary
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                                   AND c.conrelid = x.indrelid)
                   AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = x.indrelid
                               AND a.attnum = ANY(x.indkey) AND a.attname = ANY(%s))
                 ORDER BY 1
                """,
                [relation(connection, table), exclude_marker, list(columns)],
            )
        else:
            cursor.execute(
                """
                SELECT conname, true FROM pg_constraint
                 WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u', 'c', 'f', 'x')
                   AND strpos(conname, %s) = 0
                UNION
                SELECT i.relname, false FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                 WHERE x.indrelid = to_regclass(%s) AND strpos(i.relname, %s) = 0
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid
                                   AND c.conrelid = x.indrelid)
                 ORDER BY 1
                """,
                [relation(connection, table), exclude_marker, relation(connection, table), exclude_marker],
            )
        return cursor.fetchall()


def index_definition(connection, name):
    """``pg_get_indexdef`` of index ``name`` (None when there is none)."""
    row = _one(connection, "SELECT pg_get_indexdef(to_regclass(%s))", [connection.ops.quote_name(name)])
    return row[0] if row else None
