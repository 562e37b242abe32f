"""A name-free snapshot of a database schema and its rows, and a readable diff.

The oracle compares a database migrated by plain Django with one migrated by
safemigrate. The two legitimately name their indexes and constraints
differently (safemigrate builds them concurrently under its own names), so
every object is described by what it *means*: which columns, which target,
which predicate, whether PostgreSQL will use or enforce it. Everything else
in the schema, including helper columns, triggers, functions, views and
backfill progress rows that a finished contract step should have removed,
shows up as a difference.

Only the ``public`` schema is read; ``django_migrations`` is bookkeeping and
differs by design (different migration files on each side).
"""

import re
from collections import Counter
from dataclasses import dataclass, field

IGNORED_TABLES = {"django_migrations"}
#: Columns safemigrate's contract archived instead of dropping (docs/pages/archive.md): plain
#: Django dropped them. Archived tables live in the archive schema, which is not read at all.
ARCHIVED_COLUMN_PREFIX = "_archived_"
#: pgtrigger's helper, installed once per database with the first trigger and
#: shared by every pgtrigger trigger of the project: not state of one change.
IGNORED_FUNCTIONS = {"_pgtrigger_should_ignore"}
PROGRESS_TABLE = "safemigrate_backfill_progress"
#: Background migrations (safemigrate's state table): one left unfinished is a difference.
BACKGROUND_TABLE = "safemigrate_background_migration"

ON_DELETE = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass
class Catalog:
    #: table -> {column: description}
    columns: dict = field(default_factory=dict)
    #: table -> sorted list of index descriptions (duplicates count)
    indexes: dict = field(default_factory=dict)
    #: table -> sorted list of constraint descriptions
    constraints: dict = field(default_factory=dict)
    #: table -> sorted list of trigger descriptions
    triggers: dict = field(default_factory=dict)
    functions: list = field(default_factory=list)
    views: list = field(default_factory=list)
    #: rows left in safemigrate's progress table (a finished rollout leaves none)
    progress: list = field(default_factory=list)
    #: background migrations neither finished nor finalized (a finished rollout leaves none)
    background: list = field(default_factory=list)
    #: table -> {pk: row dict}
    rows: dict = field(default_factory=dict)
    #: table -> its comment and tablespace
    options: dict = field(default_factory=dict)


def _fetch(connection, sql, params=None):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _strip_index_name(definition):
    # "CREATE UNIQUE INDEX name ON public.t USING btree (a)" -> "UNIQUE btree (a)"
    match = re.match(r'CREATE (UNIQUE )?INDEX (?:"[^"]+"|\S+) ON (?:ONLY )?\S+ USING (.*)$', definition)
    if not match:
        return definition
    return f"{'UNIQUE ' if match.group(1) else ''}{match.group(2)}"


def _strip_trigger_name(definition):
    return re.sub(r'^CREATE (CONSTRAINT )?TRIGGER (?:"[^"]+"|\S+) ', r"CREATE \1TRIGGER ", definition)


def tables(connection):
    return [name for (name,) in _fetch(connection, """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY 1""")
            if name not in IGNORED_TABLES]


def snapshot(connection, masked_columns=None):
    """The catalog and rows of ``connection``'s database.

    ``masked_columns`` maps tables to columns whose values are only compared
    as NULL / not NULL (per-row random defaults such as ``uuid4``).
    """
    masked_columns = masked_columns or {}
    catalog = Catalog()
    for table in tables(connection):
        if table == BACKGROUND_TABLE:
            catalog.background = sorted(f"{name} on {table_name} ({state})" for
                                       name, table_name, state in _fetch(connection, f'SELECT name, table_name, state '
                                       f'FROM "{BACKGROUND_TABLE}" WHERE state NOT IN (\'finished\', \'finalized\')'))
            continue
        if table == PROGRESS_TABLE:
            catalog.progress = sorted(
                f"{name} on {table_name} (done={done})" for name, table_name, done in _fetch(
                    connection, f'SELECT name, table_name, done FROM "{PROGRESS_TABLE}"'))
            continue
        catalog.columns[table] = _columns(connection, table)
        ((comment, tablespace),) = _fetch(connection, """
            SELECT obj_description(c.oid, 'pg_class'), t.spcname FROM pg_class c
            LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.oid = %s::regclass""", [f'"{table}"'])
        catalog.options[table] = f"comment={comment!r} tablespace={tablespace or 'default'}"
        catalog.indexes[table] = _indexes(connection, table)
        catalog.constraints[table] = _constraints(connection, table)
        catalog.triggers[table] = sorted(_strip_trigger_name(d) for (d,) in _fetch(connection, """
            SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
            WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal""", [f'"{table}"']))
        catalog.rows[table] = _rows(connection, table, masked_columns.get(table, ()))
    catalog.functions = sorted(f"{name}({args})" for name, args in _fetch(connection, """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema()""")
        if name not in IGNORED_FUNCTIONS)
    catalog.views = sorted(name for (name,) in _fetch(connection, """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('v', 'm')"""))
    return catalog


def _columns(connection, table):
    out = {}
    for name, type_, notnull, default, identity, generated, seq_type, comment, collation in _fetch(connection, """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               (SELECT format_type(s.seqtypid, NULL) FROM pg_sequence s
                 WHERE s.seqrelid = pg_get_serial_sequence(quote_ident(%s), a.attname)::regclass),
               col_description(a.attrelid, a.attnum),
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped""", [table, f'"{table}"']):
        if name.startswith(ARCHIVED_COLUMN_PREFIX):
            continue
        description = f"{type_} {'NOT NULL' if notnull else 'NULL'}"
        if default is not None:
            description += f" DEFAULT {_literal_default(default)}"
        if identity:
            description += f" IDENTITY({'ALWAYS' if identity == 'a' else 'BY DEFAULT'})"
        if generated:
            description += " GENERATED " + ("STORED" if generated == "s" else "VIRTUAL")
        if seq_type:
            description += f" SEQUENCE {seq_type}"
        if collation:
            description += f" COLLATE {collation}"
        if comment is not None:
            description += f" COMMENT {comment!r}"
        out[name] = description
    return out


def _literal_default(expression):
    """A string literal default without its cast: ``'x'::text`` and ``'x'::character varying``
    put the same value in the column (the cast only records how the column came to be)."""
    return re.sub(r"^('(?:[^']|'')*')::[a-z ]+$", r"\1", expression)


def _indexes(connection, table):
    out = []
    for definition, valid, ready in _fetch(connection, """
        SELECT pg_get_indexdef(i.indexrelid), i.indisvalid, i.indisready FROM pg_index i
        WHERE i.indrelid = %s::regclass""", [f'"{table}"']):
        description = _strip_index_name(definition)
        if not (valid and ready):
            description += " INVALID"
        out.append(description)
    return sorted(out)


def _constraints(connection, table):
    out = []
    for contype, columns, target, target_columns, deltype, deferrable, deferred, validated, definition in _fetch(
            connection, """
        SELECT c.contype,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)
                  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
               c.confrelid::regclass::text,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.n) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)
                  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum),
               c.confdeltype, c.condeferrable, c.condeferred, c.convalidated, pg_get_constraintdef(c.oid)
        FROM pg_constraint c WHERE c.conrelid = %s::regclass""", [f'"{table}"']):
        if contype == "n":
            # PostgreSQL 18 records NOT NULL as constraints; the column says
            # NOT NULL already, only an unvalidated one adds information.
            if not validated:
                out.append(f"NOT NULL ({columns}) NOT VALID")
            continue
        if contype == "f":
            description = f"FOREIGN KEY ({columns}) -> {target.strip(chr(34))}({target_columns}) ON DELETE {ON_DELETE[deltype]}"
        elif contype == "c":
            description = re.sub(r"\s+NOT VALID$", "", definition)
        elif contype == "u":
            description = "UNIQUE " + definition.split("UNIQUE", 1)[1].strip()
        elif contype == "p":
            description = f"PRIMARY KEY ({columns})"
        else:
            description = definition
        if deferrable:
            description += " DEFERRABLE INITIALLY " + ("DEFERRED" if deferred else "IMMEDIATE")
        if not validated:
            description += " NOT VALID"
        out.append(description)
    return sorted(out)


def _rows(connection, table, masked):
    with connection.cursor() as cursor:
        pk = connection.introspection.get_primary_key_column(cursor, table)
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
        names = [column.name for column in cursor.description]
        rows = cursor.fetchall()
    out = {}
    for number, values in enumerate(rows):
        row = dict(zip(names, values))
        for column in masked:
            if column in row:
                row[column] = "<null>" if row[column] is None else "<not null>"
        key = row[pk] if pk in row else tuple(sorted(row.items(), key=lambda item: item[0]))
        out[key] = row
    return out


def _diff_lists(label, where, plain, safe, out):
    if label in ("index", "constraint"):
        # Meaning, not count: two identical UNIQUE (b) say no more than one.
        # Plain Django keeps only a Meta UniqueConstraint where a field's own
        # unique=True covers the same column after a rename; safemigrate keeps
        # both. An index or constraint missing on either side still shows.
        plain, safe = sorted(set(plain)), sorted(set(safe))
    plain_count, safe_count = Counter(plain), Counter(safe)
    for item in sorted((plain_count - safe_count).elements()):
        out.append(f"{where}: {label} only in plain Django: {item}")
    for item in sorted((safe_count - plain_count).elements()):
        out.append(f"{where}: {label} only in safemigrate: {item}")


def diff(plain, safe, max_rows=5):
    """Readable differences between two catalogs (plain Django first); empty if equal."""
    out = []
    _diff_lists("table", "schema", list(plain.columns), list(safe.columns), out)
    for table in sorted(set(plain.columns) & set(safe.columns)):
        plain_columns, safe_columns = plain.columns[table], safe.columns[table]
        for column in sorted(set(plain_columns) | set(safe_columns)):
            a, b = plain_columns.get(column), safe_columns.get(column)
            if a != b:
                out.append(f"{table}.{column}: plain Django {a or '(no column)'}; safemigrate {b or '(no column)'}")
        plain_indexes = _without_stale_pattern_indexes(plain.indexes[table], safe.indexes[table], table, out)
        _diff_lists("index", table, plain_indexes, safe.indexes[table], out)
        _diff_lists("constraint", table, plain.constraints[table], safe.constraints[table], out)
        _diff_lists("trigger", table, plain.triggers[table], safe.triggers[table], out)
        if plain.options[table] != safe.options[table]:
            out.append(f"{table}: table options differ: plain Django {plain.options[table]}; "
                       f"safemigrate {safe.options[table]}")
        # A column on one side only is reported above; its values would only repeat that.
        common = set(plain_columns) & set(safe_columns)
        out.extend(_diff_rows(table, _only(plain.rows[table], common), _only(safe.rows[table], common), max_rows))
    _diff_lists("function", "schema", plain.functions, safe.functions, out)
    _diff_lists("view", "schema", plain.views, safe.views, out)
    _diff_lists("backfill progress row", "schema", plain.progress, safe.progress, out)
    _diff_lists("unfinished background migration", "schema", plain.background, safe.background, out)
    return out


KEPT = "kept difference: "
_PATTERN = re.compile(r"^btree \((\S+) (varchar|text)_pattern_ops\)$")


def _without_stale_pattern_indexes(plain, safe, table, out):
    """Plain Django's stale ``_like`` index, kept on purpose (docs/pages/oracle.md), as a ``kept difference``.

    After a rename (of the field or of its model) and a varchar <-> text type
    change, plain Django looks the old ``_like`` index up by a name computed
    from the new names, does not find it, and leaves it (wrong operator
    class) next to the new one. safemigrate replaces it. Only an index like
    that, on a column both sides index with the other operator class, is
    taken out of the comparison and reported as kept.
    """
    kept = []
    for item in plain:
        match = _PATTERN.match(item)
        if match and item not in safe:
            column, kind = match.groups()
            other = f"btree ({column} {'text' if kind == 'varchar' else 'varchar'}_pattern_ops)"
            if other in plain and other in safe:
                kept.append(item)
                out.append(f"{KEPT}{table}: index only in plain Django: {item}")
    return [item for item in plain if item not in kept]


def _only(rows, columns):
    return {key: {column: value for column, value in row.items() if column in columns} for key, row in rows.items()}


def _diff_rows(table, plain, safe, max_rows):
    out = []
    for key in sorted(set(plain) | set(safe), key=repr):
        a, b = plain.get(key), safe.get(key)
        if a == b:
            continue
        if len(out) >= max_rows:
            out.append(f"{table}: more rows differ")
            break
        if a is None or b is None:
            side = "plain Django" if b is None else "safemigrate"
            out.append(f"{table} row {key!r} only in {side}: {a or b}")
            continue
        changed = {column: (a.get(column), b.get(column)) for column in sorted(set(a) | set(b))
                   if a.get(column) != b.get(column)}
        out.append(f"{table} row {key!r}: " + ", ".join(
            f"{column} plain={x!r} safemigrate={y!r}" for column, (x, y) in changed.items()))
    return out
