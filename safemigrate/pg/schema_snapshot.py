"""A name-free description of a database schema, and the differences between two.

``manage.py rehearse`` checks that a rollback puts the schema back exactly
and that running the release again ends where the first run ended. Index and
constraint names legitimately differ between runs (safemigrate builds them
concurrently under names of its own, then renames them), so each object is
described by what it means: its columns, target, predicate, validity, and
whether PostgreSQL will use or enforce it. Leftover helper objects
(triggers, functions, views, shadow columns) show up as differences.

The same normalisation as the differential oracle's (``tests/oracle/catalog.py``),
schema only and over every user schema. ``django_migrations`` and
safemigrate's backfill progress table are bookkeeping and left out, and so is
pgtrigger's shared helper function. What contract archived instead of dropping
(columns named ``_archived_*``, the archive schema with its manifest) is left
out too: plain Django dropped it, and ``manage.py archive`` owns it.
"""

import re
from collections import Counter
from dataclasses import dataclass, field

from .archive_store import COLUMN_PREFIX, schema_name
from .catalog import ON_DELETE

IGNORED_TABLES = {"django_migrations", "safemigrate_backfill_progress"}
IGNORED_FUNCTIONS = {"_pgtrigger_should_ignore"}
_USER = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
         "AND n.nspname NOT LIKE 'pg_temp%'")


@dataclass
class Schema:
    columns: dict = field(default_factory=dict)
    indexes: dict = field(default_factory=dict)
    constraints: dict = field(default_factory=dict)
    triggers: dict = field(default_factory=dict)
    functions: list = field(default_factory=list)
    views: list = field(default_factory=list)

    def as_dict(self):
        return {"columns": self.columns, "indexes": self.indexes, "constraints": self.constraints,
                "triggers": self.triggers, "functions": self.functions, "views": self.views}


def _fetch(cursor, query, params=None):
    cursor.execute(query, params)
    return cursor.fetchall()


def _label(schema, name):
    return name if schema == "public" else f"{schema}.{name}"


def snapshot(cursor):
    """The ``Schema`` of the database ``cursor`` (a DB-API cursor) is connected to."""
    schema = Schema()
    tables = _fetch(cursor, f"""
        SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {_USER} ORDER BY 2, 3""")
    for oid, nsp, name in tables:
        if name in IGNORED_TABLES or nsp == schema_name():
            continue
        label = _label(nsp, name)
        schema.columns[label] = _columns(cursor, oid)
        schema.indexes[label] = sorted(_index(d, valid) for d, valid in _fetch(
            cursor, "SELECT pg_get_indexdef(indexrelid), indisvalid AND indisready FROM pg_index WHERE indrelid = %s",
            [oid]))
        schema.constraints[label] = _constraints(cursor, oid)
        schema.triggers[label] = sorted(
            re.sub(r'^CREATE (CONSTRAINT )?TRIGGER (?:"[^"]+"|\S+) ', r"CREATE \1TRIGGER ", d)
            for (d,) in _fetch(cursor, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = %s "
                                       "AND NOT tgisinternal", [oid]))
    schema.functions = sorted(f"{_label(nsp, name)}({args})" for nsp, name, args in _fetch(cursor, f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')""")
        if name not in IGNORED_FUNCTIONS)
    schema.views = sorted(_label(nsp, name) for nsp, name in _fetch(cursor, f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_USER}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"""))
    return schema


def _columns(cursor, oid):
    out = {}
    for name, type_, notnull, default, identity, generated in _fetch(cursor, """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               a.attidentity, a.attgenerated
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped""", [oid]):
        if name.startswith(COLUMN_PREFIX):
            continue
        description = f"{type_} {'NOT NULL' if notnull else 'NULL'}"
        if default is not None:
            # 'x'::text and 'x'::character varying put the same value in the column.
            default = re.sub(r"^('(?:[^']|'')*')::[a-z ]+$", r"\1", default)
            # A serial's sequence name depends on the table's history, not its meaning.
            default = re.sub(r"^nextval\('[^']+'::regclass\)$", "nextval(<sequence>)", default)
            description += f" DEFAULT {default}"
        if identity:
            description += f" IDENTITY({'ALWAYS' if identity == 'a' else 'BY DEFAULT'})"
        if generated:
            description += " GENERATED"
        out[name] = description
    return out


def _index(definition, valid):
    match = re.match(r'CREATE (UNIQUE )?INDEX (?:"[^"]+"|\S+) ON (?:ONLY )?\S+ USING (.*)$', definition)
    text = f"{'UNIQUE ' if match.group(1) else ''}{match.group(2)}" if match else definition
    return text if valid else text + " INVALID"


def _constraints(cursor, oid):
    out = []
    for contype, columns, target, target_columns, deltype, deferrable, deferred, validated, definition in _fetch(
            cursor, """
        SELECT c.contype,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, n)
                  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
               c.confrelid::regclass::text,
               (SELECT string_agg(a.attname, ', ' ORDER BY k.n) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, n)
                  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum),
               c.confdeltype, c.condeferrable, c.condeferred, c.convalidated, pg_get_constraintdef(c.oid)
        FROM pg_constraint c WHERE c.conrelid = %s""", [oid]):
        if contype == "n":
            # PostgreSQL 18 records NOT NULL as constraints; only an unvalidated one adds anything.
            if not validated:
                out.append(f"NOT NULL ({columns}) NOT VALID")
            continue
        if contype == "f":
            description = (f"FOREIGN KEY ({columns}) -> {target.strip(chr(34))}({target_columns}) "
                           f"ON DELETE {ON_DELETE[deltype]}")
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


def _diff_lists(kind, where, expected, actual, out, as_sets=False):
    if as_sets:
        expected, actual = sorted(set(expected)), sorted(set(actual))
    a, b = Counter(expected), Counter(actual)
    for item in sorted((a - b).elements()):
        out.append(f"{where}: {kind} missing: {item}")
    for item in sorted((b - a).elements()):
        out.append(f"{where}: extra {kind}: {item}")


def diff(expected, actual):
    """Readable differences between two ``Schema`` objects (``expected`` first); empty when equal."""
    out = []
    _diff_lists("table", "schema", list(expected.columns), list(actual.columns), out)
    for table in sorted(set(expected.columns) & set(actual.columns)):
        a, b = expected.columns[table], actual.columns[table]
        for column in sorted(set(a) | set(b)):
            if a.get(column) != b.get(column):
                out.append(f"{table}.{column}: expected {a.get(column) or '(no column)'}, "
                           f"found {b.get(column) or '(no column)'}")
        _diff_lists("index", table, expected.indexes[table], actual.indexes[table], out, as_sets=True)
        _diff_lists("constraint", table, expected.constraints[table], actual.constraints[table], out, as_sets=True)
        _diff_lists("trigger", table, expected.triggers[table], actual.triggers[table], out)
    _diff_lists("function", "schema", expected.functions, actual.functions, out)
    _diff_lists("view", "schema", expected.views, actual.views, out)
    return out
