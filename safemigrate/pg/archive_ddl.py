"""What an archived column or table carries, read from the catalog, and the statements around it.

``column_facts`` finds everything ``DROP COLUMN`` would take along (through
``pg_depend``, so expression indexes, partial-index predicates and CHECKs
that mention the column count too). The soft archive drops those objects
(plain indexes are renamed aside and dropped CONCURRENTLY after the locked
step, ``hold_indexes``) and renames the column, so that nothing (no index, no constraint, no
default, no NOT NULL, no dual-write trigger) makes a write pay for it or
fail because of it; the manifest keeps their definitions, and restore
builds them again the lock-friendly way (indexes CONCURRENTLY, constraints
NOT VALID then VALIDATE).

The statements are built with ``pg.sql`` (each declares its lock and how it
runs) and put into plans by ``pg.archive`` and the restore, reverse and
purge plans; nothing here executes DDL. ``column_ddl`` / ``table_ddl`` are
only text for people (``archive show``), never run.
"""

import hashlib
import json
import re

from . import catalog, sql
from .statements import DeclaredSQL, Statement
from .triggers import drop_trigger_sql


def _rows(connection, sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# -- facts -----------------------------------------------------------------------------------


_COLUMN_FACTS = """
    WITH col AS (
        SELECT a.attrelid AS rel, a.attnum, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable,
               CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS "default",
               a.attidentity::text AS identity,
               a.attgenerated::text AS generated, n.nspname AS schema
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = to_regclass(%(table)s) AND a.attname = %(column)s AND a.attnum > 0 AND NOT a.attisdropped
    ), dep AS (
        SELECT d.classid, d.objid FROM pg_depend d, col
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = col.rel AND d.refobjsubid = col.attnum
    )
    SELECT col.type, col.nullable, col."default", col.identity, col.generated, col.schema,
        coalesce((SELECT json_agg(json_build_object(
                    'name', c.conname, 'type', c.contype::text, 'table', c.conrelid::regclass::text,
                    'relname', (SELECT r.relname FROM pg_class r WHERE r.oid = c.conrelid),
                    'definition', pg_get_constraintdef(c.oid),
                    'index_definition', CASE WHEN c.contype IN ('u', 'x') THEN pg_get_indexdef(c.conindid) END)
                    ORDER BY c.conrelid = col.rel DESC, c.conname)
                   FROM pg_constraint c
                  WHERE c.oid IN (SELECT objid FROM dep WHERE classid = 'pg_constraint'::regclass)
                    AND c.contype NOT IN ('p', 'n')), '[]'),
        coalesce((SELECT json_agg(json_build_object('name', i.relname, 'definition', pg_get_indexdef(i.oid),
                                                    'unique', x.indisunique, 'partitioned', i.relkind = 'I')
                                  ORDER BY i.relname)
                   FROM pg_class i JOIN pg_index x ON x.indexrelid = i.oid
                  WHERE i.oid IN (SELECT objid FROM dep WHERE classid = 'pg_class'::regclass)
                    AND i.relkind IN ('i', 'I')
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid AND k.conrelid = x.indrelid
                                    AND k.contype IN ('p', 'u', 'x'))), '[]'),
        coalesce((SELECT json_agg(json_build_object('name', t.tgname, 'function', p.proname) ORDER BY t.tgname)
                   FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                  WHERE t.tgrelid = col.rel AND NOT t.tgisinternal AND p.proname LIKE 'safemigrate%%'
                    AND strpos(p.prosrc, %(quoted_column)s) > 0), '[]'),
        (SELECT array_agg(a.attname::text) FROM pg_attribute a WHERE a.attrelid = col.rel AND a.attnum > 0
            AND NOT a.attisdropped),
        (SELECT array_agg(a.attname::text || ' ' || format_type(a.atttypid, a.atttypmod))
           FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)
          WHERE x.indrelid = col.rel AND x.indisprimary)
      FROM col
"""


def column_facts(connection, table, column):
    """The column and what hangs on it, or None when it does not exist (one catalog query).

    ``{"type", "nullable", "default", "identity", "generated", "schema",
    "constraints": [...], "indexes": [...], "triggers": [...], "columns",
    "primary_key"}``. ``constraints`` are those of the table that involve
    the column (its primary key excepted: the operations that archive a key
    column move the key themselves) and foreign keys of other tables that
    reference it; ``triggers`` are safemigrate's dual-write triggers whose
    body names the column (they would fail every write once the column is
    renamed); ``columns`` are the table's column names; ``primary_key`` is
    ``[name, type]`` of a single-column primary key, else None. One query,
    because in an atomic migration the locks of earlier steps are held
    while this runs. A rename window's view (``pg.windows``) is read through
    its base table: the view's column is always nullable and has nothing on
    it, so NOT NULL, indexes and constraints of the real column would stay on
    the archived one (the statements naming the view are pointed at the base).
    """
    quote = connection.ops.quote_name
    found = _rows(connection, _COLUMN_FACTS,
                  {"table": quote(catalog.resolve(connection, table)), "column": column,
                   "quoted_column": quote(column)})
    if not found:
        return None
    type_, nullable, default, identity, generated, schema, constraints, indexes, triggers, names, key = found[0]
    load = (lambda value: json.loads(value) if isinstance(value, str) else value)
    key = list(key or [])
    return {"type": type_, "nullable": nullable, "default": default, "identity": identity or "",
            "generated": generated or "", "schema": schema, "constraints": load(constraints),
            "indexes": load(indexes), "triggers": load(triggers), "columns": list(names or []),
            "primary_key": key[0].split(" ", 1) if len(key) == 1 else None}


def table_facts(connection, table):
    """The table and what must move or be recorded with it, or None when it does not exist."""
    quoted = connection.ops.quote_name(table)
    found = _rows(connection, """
        SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')""", [quoted])
    if not found:
        return None
    columns = [
        {"name": name, "type": type_, "nullable": nullable, "default": default}
        for name, type_, nullable, default in _rows(connection, """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
              FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            [quoted])
    ]
    foreign_keys = [
        {"name": name, "table": on_table, "relname": relname, "definition": definition}
        for name, on_table, relname, definition in _rows(connection, """
            SELECT conname, conrelid::regclass::text, (SELECT r.relname FROM pg_class r WHERE r.oid = conrelid),
                   pg_get_constraintdef(oid) FROM pg_constraint
             WHERE contype = 'f' AND (conrelid = to_regclass(%s) OR confrelid = to_regclass(%s))
             ORDER BY conrelid = to_regclass(%s) DESC, conname""", [quoted, quoted, quoted])
    ]
    constraints = [
        {"name": name, "definition": definition}
        for name, definition in _rows(connection, """
            SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u', 'c', 'x') ORDER BY conname""", [quoted])
    ]
    indexes = [
        {"name": name, "definition": definition}
        for name, definition in _rows(connection, """
            SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = to_regclass(%s) ORDER BY 1""", [quoted])
    ]
    sequences = [name for (name,) in _rows(connection, """
        SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid
         WHERE s.relkind = 'S' AND d.classid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s)
           AND d.deptype IN ('a', 'i') ORDER BY 1""", [quoted])]
    triggers = [
        {"name": name, "function": function}
        for name, function in _rows(connection, """
            SELECT t.tgname, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE t.tgrelid = to_regclass(%s) AND NOT t.tgisinternal AND p.proname LIKE 'safemigrate%%'
             ORDER BY 1""", [quoted])
    ]
    return {"schema": found[0][0], "columns": columns, "foreign_keys": foreign_keys, "constraints": constraints,
            "indexes": indexes, "sequences": sequences, "triggers": triggers}


# -- statements: archiving ---------------------------------------------------------------------


def held_index_name(index, archived_column):
    """The name a column's index is set aside under until it is dropped CONCURRENTLY.

    Deterministic (a re-run finds it), distinct from every name Django gives
    (so the index's name is free at once for the field that takes the
    column's place) and per archived column (the same index name archived
    twice before the first finish does not collide).
    """
    digest = hashlib.md5(f"{archived_column}/{index}".encode()).hexdigest()[:10]
    return f"_archived_{digest}_{index}"[:63]


def hold_indexes(facts, archived_column):
    """Mark the indexes of ``facts`` that are set aside rather than dropped in the archive step.

    Dropping an index inside the archive step's transaction unlinks its files
    at commit, while the transaction still holds ACCESS EXCLUSIVE: at 10M rows
    that was 260 ms of queued traffic for one 200 MB index. Renaming it is a
    catalog change; ``archive_finish`` drops it CONCURRENTLY afterwards (and a
    re-run finishes a killed one: the name is recorded in the manifest). Not
    set aside: unique indexes (with NULLS NOT DISTINCT a NULL written to the
    archived column could collide) and partitioned ones (PostgreSQL cannot
    drop those CONCURRENTLY).
    """
    for index in facts["indexes"]:
        if not index.get("unique") and not index.get("partitioned"):
            index["held_as"] = held_index_name(index["name"], archived_column)
    return facts


def held_indexes(definition):
    """Names of the set-aside indexes an archive's recorded ``definition`` still owes a drop."""
    return [index["held_as"] for index in definition.get("indexes", []) if index.get("held_as")]


def strip_column(table, column, facts):
    """Statements that leave ``column`` holding its values and nothing else.

    ACCESS EXCLUSIVE on ``table`` (instant, catalog only); SHARE ROW EXCLUSIVE
    (the declared lock of a foreign key's drop is ACCESS EXCLUSIVE on its
    table) on a table whose foreign key references the column. They run
    inside the archive step's short transaction, before the rename. Indexes
    marked by ``hold_indexes`` are renamed out of the way, not dropped: a drop
    would unlink the files while the lock is held.
    """
    statements = []
    for trigger in facts["triggers"]:
        statements += [sql.drop_trigger(drop_trigger_sql(table, trigger["name"]), table, trigger["name"]),
                       sql.drop_function(trigger["function"])]
    for constraint in facts["constraints"]:
        statements.append(sql.drop_constraint(constraint["relname"], constraint["name"]).but(skip_if=None))
    for index in facts["indexes"]:
        name = sql.qualified(facts["schema"], index["name"])
        if index.get("held_as"):
            statements.append(sql.rename_index(name, index["held_as"], table))
        else:
            statements.append(sql.drop_index(name, table).but(skip_if=None))
    if facts["default"] is not None:
        statements.append(sql.drop_default(table, column))
    if facts["identity"]:
        statements.append(sql.drop_identity(table, column))
    if facts["generated"]:
        statements.append(sql.drop_expression(table, column))
    if not facts["nullable"]:
        statements.append(sql.drop_not_null(table, column))
    return statements


def column_ddl(quote, table, column, facts):
    """Readable DDL re-creating the column as it was (shown by ``archive show``; never run)."""
    lines = [f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column)} {facts['type']}"
             + ("" if facts["nullable"] else " NOT NULL")
             + (f" DEFAULT {facts['default']}" if facts["default"] is not None else "")
             + (" GENERATED BY DEFAULT AS IDENTITY" if facts["identity"] else "") + ";"]
    lines += [index["definition"] + ";" for index in facts["indexes"]]
    lines += [f"ALTER TABLE {c['table']} ADD CONSTRAINT {quote(c['name'])} {c['definition']};"
              for c in facts["constraints"]]
    return "\n".join(lines)


def move_table(schema, table, archived, archive_schema, object_names):
    """Rename the table and its indexes and sequences, then move it into the archive schema.

    ACCESS EXCLUSIVE on the table, catalog only: SET SCHEMA moves the
    table with its indexes, constraints, owned sequences and row type
    without touching a data page.
    """
    statements = [sql.rename_index(sql.qualified(schema, old), new, table).but(label=f"rename index {old}")
                  for old, new in object_names["indexes"].items()]
    statements += [sql.rename_sequence(sql.qualified(schema, old), new, table)
                   for old, new in object_names["sequences"].items()]
    statements += [sql.rename_table(sql.qualified(schema, table), archived),
                   sql.set_schema(sql.qualified(schema, archived), archive_schema).but(table=table)]
    return statements


def unmove_table(schema, table, archived, archive_schema, object_names):
    """The reverse of ``move_table``: ACCESS EXCLUSIVE on the archived table, catalog only."""
    statements = [sql.set_schema(sql.qualified(archive_schema, archived), schema),
                  sql.rename_table(sql.qualified(schema, archived), table)]
    statements += [sql.rename_index(sql.qualified(schema, new), old, table).but(label=f"rename index {new}")
                   for old, new in object_names["indexes"].items()]
    statements += [sql.rename_sequence(sql.qualified(schema, new), old, table)
                   for old, new in object_names["sequences"].items()]
    return statements


def drop_triggers(table, found):
    """safemigrate's triggers on ``table`` (ACCESS EXCLUSIVE on it, instant); their functions go with them."""
    return [statement for trigger in found
            for statement in (sql.drop_trigger(drop_trigger_sql(table, trigger["name"]), table,
                                               trigger["name"]),
                              sql.drop_function(trigger["function"]))]


def drop_foreign_key(on_table, name):
    """A foreign key of the table or pointing at it: instant (declared ACCESS EXCLUSIVE on ``on_table``)."""
    return sql.drop_constraint(on_table, name).but(skip_if=None, label=f"drop foreign key {name} (recorded)")


def table_ddl(quote, table, facts):
    """Readable DDL re-creating the table as it was (shown by ``archive show``; never run)."""
    columns = ",\n    ".join(
        f"{quote(c['name'])} {c['type']}" + ("" if c["nullable"] else " NOT NULL")
        + (f" DEFAULT {c['default']}" if c["default"] is not None else "") for c in facts["columns"])
    lines = [f"CREATE TABLE {quote(table)} (\n    {columns}\n);"]
    lines += [f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(c['name'])} {c['definition']};"
              for c in facts["constraints"]]
    constrained = {c["name"] for c in facts["constraints"]}
    lines += [i["definition"] + ";" for i in facts["indexes"] if i["name"] not in constrained]
    lines += [f"ALTER TABLE {fk['table']} ADD CONSTRAINT {quote(fk['name'])} {fk['definition']};"
              for fk in facts["foreign_keys"]]
    return "\n".join(lines)


# -- restoring: definitions on another column ------------------------------------------------


def _identifier_pattern(column):
    bare = re.escape(column)
    return re.compile(rf'"{bare}"|(?<![\w$".]){bare}(?![\w$"])')


def with_column(definition, old, new, quote):
    """``definition`` with column ``old`` renamed to ``new`` (the text after ``USING`` / before ``REFERENCES``).

    Used to build an archived column's indexes and constraints on that
    column while it still has its archive name.
    """
    if old == new:
        return definition
    pattern = _identifier_pattern(old)
    replacement = quote(new)
    if " USING " in definition and definition.startswith("CREATE"):
        head, tail = definition.split(" USING ", 1)
        return head + " USING " + pattern.sub(lambda m: replacement, tail)
    if definition.startswith("FOREIGN KEY") and " REFERENCES " in definition:
        head, tail = definition.split(" REFERENCES ", 1)
        return pattern.sub(lambda m: replacement, head) + " REFERENCES " + tail
    return pattern.sub(lambda m: replacement, definition)


def without_not_valid(definition):
    """A constraint definition as ``pg_get_constraintdef`` printed it, without a trailing NOT VALID."""
    return re.sub(r"\s+NOT VALID$", "", definition)


def deferral(definition):
    """`` DEFERRABLE ...`` of a UNIQUE constraint's definition, or ``""``."""
    match = re.search(r"\s(DEFERRABLE.*)$", definition)
    return " " + match.group(1) if match else ""


def referenced_table(definition):
    """The table a FOREIGN KEY definition references (as written there)."""
    match = re.search(r'REFERENCES\s+((?:"(?:[^"]|"")+"|[\w$.])+)\s*\(', definition)
    return match.group(1) if match else None


def bounded(statements):
    """``statements`` (``pg.statements.Statement`` objects) as ``pg.ddl.run_ddl`` takes them.

    The archive commands (restore, purge, the copy) run outside any
    migration's plan, one short lock-bounded transaction at a time; the
    text sent still carries its declared statement (``DeclaredSQL``).
    """
    return [(DeclaredSQL(s.sql, s), list(s.params) or None) if isinstance(s, Statement) else s for s in statements]
