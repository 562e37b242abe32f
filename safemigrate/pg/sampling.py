"""A consistent sample of a database, copied into a scratch database (``rehearse --sample``).

What is copied, and why:

- **Rows by primary-key hash.** A row is in the sample when
  ``hashtextextended(key::text, seed) mod 2^20`` falls below the percentage.
  The hash spreads the sample over the whole key range (old and new rows,
  every page), unlike ``LIMIT`` or ``TABLESAMPLE SYSTEM`` (whole pages, which
  clusters by insertion time); it is deterministic for a seed, so the same
  command picks the same rows; and a table without a primary key hashes the
  whole row. Small tables (under ``SMALL_TABLE_ROWS`` estimated rows:
  lookup tables, content types) and Django's bookkeeping are copied whole,
  since a 1 % sample of a 50-row table says nothing and breaks data
  migrations that look rows up.
- **One snapshot.** Every read runs in one ``REPEATABLE READ READ ONLY``
  transaction on the source, so rows of different tables agree with each
  other, as they did at one moment. Nothing is written to the source: no
  temporary tables, no ``ANALYZE``, no sequence calls (the closure below is
  computed in the scratch database).
- **Foreign keys kept consistent (closure).** A sampled child row needs its
  parent. After the hash sample, every foreign key is checked in the scratch
  database for child values without a parent; those parents are fetched from
  the source (in the same snapshot) and added, and this repeats until nothing
  is missing, so chains through several tables and cycles settle (a row
  already present is never copied twice). A self-reference on one column
  (``parent_id`` trees, ``previous_id`` chains) fetches all ancestors in one
  recursive query instead of one round per generation. NULL foreign keys
  need nothing (MATCH SIMPLE). Many-to-many tables are sampled like any
  table and pull in both ends, which keeps the join's distribution: a
  sample of only pairs whose both ends were sampled would hold about
  percent² of them. The sample can therefore hold more than the percentage
  of a parent table; the estimates use each table's actual row count.
- **Loaded like a restore.** The schema is already in the scratch database
  (from ``pg_dump --schema-only`` or by replaying migrations); foreign keys
  are dropped and user triggers disabled while rows are loaded (so no
  trigger writes audit rows or touches other tables), then put back exactly
  as they were. Re-adding the foreign keys validates them: a sample that
  were not closed would fail there, loudly. Sequences are set to the
  source's values, so new rows never collide with copied ones.

The scratch database is private to the rehearsal (no other session uses it),
so the DDL of the load waits for nobody; it still goes through
``pg.ddl.run_ddl`` like every statement that takes a table lock.
"""

import time
from dataclasses import dataclass, field

import psycopg

from ..exceptions import SafeMigrateError
from .ddl import run_ddl

#: Hash buckets: a row is sampled when its hash modulo this falls below percent / 100 of it.
BUCKETS = 1 << 20
#: Tables with fewer estimated rows than this are copied whole.
SMALL_TABLE_ROWS = 1000
#: ... and so are tables never analysed (no estimate) smaller than this many bytes.
SMALL_TABLE_BYTES = 1 << 20
#: Always copied whole: migration bookkeeping and safemigrate's own progress records.
WHOLE_TABLES = {"django_migrations", "safemigrate_backfill_progress"}
#: A cycle of foreign keys through several tables adds one generation of rows per round.
MAX_ROUNDS = 10000
#: Schemas holding user tables (queries using it take no parameters, so ``%`` is literal).
USER_SCHEMAS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
                "AND n.nspname NOT LIKE 'pg_temp%'")


class SourceUnreadable(SafeMigrateError):
    """The source cannot be read as the sample needs; the message names what and what to do."""


@dataclass
class Table:
    schema: str
    name: str
    columns: list
    key: list
    reltuples: float
    bytes: int

    @property
    def label(self):
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


@dataclass
class ForeignKey:
    name: str
    child: tuple
    columns: list
    parent: tuple
    parent_columns: list
    definition: str
    parent_types: list


@dataclass
class TableSample:
    label: str
    whole: bool
    sampled: int = 0
    added_for_foreign_keys: int = 0

    @property
    def rows(self):
        return self.sampled + self.added_for_foreign_keys


@dataclass
class SampleResult:
    percent: float
    seed: int
    tables: dict = field(default_factory=dict)
    rounds: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def _quote(connection, *names):
    return ".".join(connection.ops.quote_name(name) for name in names)


def source_tables(cursor):
    """Every ordinary and partitioned table (partitions are reached through their root), with its columns and key."""
    rows = cursor.execute(f"""
        SELECT n.nspname, c.relname, c.reltuples, pg_relation_size(c.oid),
               ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                     AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum),
               ARRAY(SELECT a.attname::text FROM pg_constraint k
                     CROSS JOIN LATERAL unnest(k.conkey) WITH ORDINALITY AS u(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
                     WHERE k.conrelid = c.oid AND k.contype = 'p' ORDER BY u.n)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMAS}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
        ORDER BY 1, 2""").fetchall()
    return [Table(schema, name, list(columns), list(key), reltuples, size)
            for schema, name, reltuples, size, columns, key in rows]


def foreign_keys(cursor):
    """Foreign keys between user tables, as (child columns -> parent columns), with their definitions."""
    rows = cursor.execute(f"""
        SELECT k.conname, cn.nspname, c.relname,
               ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY u.n),
               pn.nspname, p.relname,
               ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum ORDER BY u.n),
               ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM unnest(k.confkey) WITH ORDINALITY u(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum ORDER BY u.n),
               pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
        JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND k.conparentid = 0 AND {USER_SCHEMAS}
        ORDER BY 2, 3, 1""").fetchall()
    return [ForeignKey(name, (cs, ct), list(cols), (ps, pt), list(pcols), definition, list(types))
            for name, cs, ct, cols, ps, pt, pcols, types, definition in rows]


def user_triggers(cursor):
    """Enabled user triggers: ``[(schema, table, trigger, tgenabled)]`` (internal FK triggers excluded)."""
    return cursor.execute(f"""
        SELECT n.nspname, c.relname, t.tgname, t.tgenabled FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgparentid = 0 AND {USER_SCHEMAS} ORDER BY 1, 2, 3""").fetchall()


def sequence_values(cursor):
    """``[(schema, sequence, last_value)]`` of the source's used sequences (a read of pg_sequences)."""
    return cursor.execute(
        "SELECT schemaname, sequencename, last_value FROM pg_sequences WHERE last_value IS NOT NULL "
        "ORDER BY 1, 2").fetchall()


# -- DDL of the load (the scratch database only) ------------------------------------------

def drop_foreign_key_sql(connection, fk):
    """Takes SHARE ROW EXCLUSIVE on the child and the parent table (scratch database; instant)."""
    return f"ALTER TABLE {_quote(connection, *fk.child)} DROP CONSTRAINT {connection.ops.quote_name(fk.name)}"


def add_foreign_key_sql(connection, fk):
    """Takes SHARE ROW EXCLUSIVE on the child and the parent table while it validates the sample (scratch only)."""
    return (f"ALTER TABLE {_quote(connection, *fk.child)} ADD CONSTRAINT {connection.ops.quote_name(fk.name)} "
            f"{fk.definition}")


def trigger_state_sql(connection, schema, table, trigger, enabled):
    """``ALTER TABLE ... DISABLE/ENABLE [REPLICA|ALWAYS] TRIGGER``: SHARE ROW EXCLUSIVE on the table (scratch only)."""
    mode = {"D": "DISABLE", "O": "ENABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}[enabled]
    return f"ALTER TABLE {_quote(connection, schema, table)} {mode} TRIGGER {connection.ops.quote_name(trigger)}"


def truncate_sql(connection, tables):
    """``TRUNCATE ... CASCADE`` of the scratch tables: ACCESS EXCLUSIVE on each (scratch only, before the load)."""
    return "TRUNCATE " + ", ".join(_quote(connection, schema, name) for schema, name in tables) + " CASCADE"


class _Editor:
    """What ``run_ddl`` reads from a schema editor."""

    collect_sql = False

    def __init__(self, connection):
        self.connection = connection


def _ddl(connection, statement, table):
    run_ddl(_Editor(connection), [statement], table=table, statement_timeout_ms=0)


# -- the copy ------------------------------------------------------------------------------

def _key_expression(connection, table):
    if len(table.key) == 1:
        return f"t.{connection.ops.quote_name(table.key[0])}"
    if table.key:
        return "ROW(" + ", ".join(f"t.{connection.ops.quote_name(c)}" for c in table.key) + ")"
    return "t"


def sample_predicate(connection, table, percent, seed):
    """The WHERE clause choosing ``percent`` % of ``table``'s rows (alias ``t``) by key hash."""
    threshold = int(round(BUCKETS * percent / 100))
    return (f"(hashtextextended(({_key_expression(connection, table)})::text, {int(seed)}) "
            f"& {BUCKETS - 1}) < {threshold}")


def copies_whole(table):
    if table.name in WHOLE_TABLES:
        return True
    if table.reltuples is not None and table.reltuples >= 0:
        return table.reltuples < SMALL_TABLE_ROWS
    return table.bytes < SMALL_TABLE_BYTES


def _unreadable(exc, what):
    return SourceUnreadable(
        f"Cannot read {what} in the source database: {str(exc).strip()}. A sample copies rows of every table, "
        "so the rehearsing role needs SELECT on all of them (PostgreSQL 14+: GRANT pg_read_all_data TO "
        "<role>); or rehearse on a copy with --from-template.")


def _stream(source, out_sql, scratch_raw, in_sql, params=None):
    with source.cursor() as reader, scratch_raw.cursor() as writer:
        with reader.copy(out_sql, params) as out, writer.copy(in_sql) as into:
            for chunk in out:
                into.write(chunk)
        return writer.rowcount


def _column_list(connection, columns):
    return ", ".join(connection.ops.quote_name(c) for c in columns)


def copy_sample(source, scratch, *, percent, seed=0, echo=None):
    """Fill the scratch database (Django connection ``scratch``, schema in place) from ``source``.

    ``source`` is a psycopg connection whose transaction is REPEATABLE READ
    READ ONLY; it is only read. Returns a ``SampleResult``.
    """
    started = time.monotonic()
    result = SampleResult(percent=percent, seed=seed)
    scratch.ensure_connection()
    raw = scratch.connection
    try:
        with source.cursor() as cursor:
            tables = source_tables(cursor)
            sequences = sequence_values(cursor)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _unreadable(exc, "the catalog") from None
    with scratch.cursor() as cursor:
        cursor.execute(f"SELECT n.nspname, c.relname, ARRAY(SELECT a.attname::text FROM pg_attribute a "
                       f"WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') "
                       f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       f"WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMAS}")
        scratch_columns = {(schema, name): set(columns) for schema, name, columns in cursor.fetchall()}
    with raw.cursor() as cursor:
        fks = foreign_keys(cursor)
        triggers = user_triggers(cursor)
    present = []
    for table in tables:
        if (table.schema, table.name) not in scratch_columns:
            result.notes.append(f"{table.label} is in the source but not in the scratch schema: not copied")
            continue
        columns = [c for c in table.columns if c in scratch_columns[(table.schema, table.name)]]
        if len(columns) < len(table.columns):
            result.notes.append(f"{table.label}: columns {sorted(set(table.columns) - set(columns))} are not in "
                                f"the scratch schema: not copied")
        table.columns = columns
        present.append(table)
    by_key = {(t.schema, t.name): t for t in present}
    fks = [fk for fk in fks if fk.child in by_key and fk.parent in by_key]
    for fk in fks:
        _ddl(scratch, drop_foreign_key_sql(scratch, fk), fk.child[1])
    for schema, table, trigger, _enabled in triggers:
        _ddl(scratch, trigger_state_sql(scratch, schema, table, trigger, "D"), table)
    try:
        for table in present:
            whole = copies_whole(table)
            sample = result.tables[table.label] = TableSample(table.label, whole)
            columns = _column_list(scratch, table.columns)
            where = "" if whole else f" WHERE {sample_predicate(scratch, table, percent, seed)}"
            try:
                sample.sampled = _stream(
                    source, f"COPY (SELECT {columns} FROM {_quote(scratch, table.schema, table.name)} AS t{where}) "
                    "TO STDOUT", raw, f"COPY {_quote(scratch, table.schema, table.name)} ({columns}) FROM STDIN")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _unreadable(exc, f"table {table.label}") from None
            if echo:
                echo(f"  {table.label}: {sample.sampled:,} rows" + (" (whole table)" if whole else ""))
        _close_foreign_keys(source, scratch, raw, fks, by_key, result, echo)
    finally:
        for schema, table, trigger, enabled in triggers:
            _ddl(scratch, trigger_state_sql(scratch, schema, table, trigger, enabled), table)
    for fk in fks:
        _ddl(scratch, add_foreign_key_sql(scratch, fk), fk.child[1])
    with scratch.cursor() as cursor:
        for schema, name, value in sequences:
            sequence = _quote(scratch, schema, name)
            cursor.execute("SELECT setval(to_regclass(%s), %s, true) WHERE to_regclass(%s) IS NOT NULL",
                           [sequence, value, sequence])
        cursor.execute("VACUUM (ANALYZE)")  # hint bits and visibility map set, as on a table in service
    result.seconds = time.monotonic() - started
    return result


def _missing_parents(scratch, fk):
    child = _quote(scratch, *fk.child)
    parent = _quote(scratch, *fk.parent)
    q = scratch.ops.quote_name
    not_null = " AND ".join(f"c.{q(col)} IS NOT NULL" for col in fk.columns)
    match = " AND ".join(f"p.{q(pcol)} = c.{q(col)}" for col, pcol in zip(fk.columns, fk.parent_columns))
    with scratch.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT {', '.join(f'c.{q(col)}' for col in fk.columns)} FROM {child} c "
                       f"WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {match})")
        return cursor.fetchall()


def _fetch_parents(source, scratch, raw, fk, table, keys):
    """Copy the parent rows with ``keys`` (and, for a one-column self-reference, their ancestors); returns rows added."""
    q = scratch.ops.quote_name
    parent = _quote(scratch, *fk.parent)
    columns = _column_list(scratch, table.columns)
    arrays = [[key[i] for key in keys] for i in range(len(fk.parent_columns))]
    if fk.child == fk.parent and len(fk.columns) == 1:
        pcol, col = q(fk.parent_columns[0]), q(fk.columns[0])
        select = (f"WITH RECURSIVE up(k) AS (SELECT {pcol} FROM {parent} WHERE {pcol} = ANY(%s::{fk.parent_types[0]}[]) "
                  f"UNION SELECT r.{col} FROM {parent} r JOIN up ON r.{pcol} = up.k WHERE r.{col} IS NOT NULL) "
                  f"SELECT {columns} FROM {parent} WHERE {pcol} IN (SELECT k FROM up)")
    else:
        names = ", ".join(f"k{i}" for i in range(len(arrays)))
        unnest = ", ".join(f"%s::{kind}[]" for kind in fk.parent_types)
        targets = ", ".join(q(c) for c in fk.parent_columns)
        select = (f"SELECT {columns} FROM {parent} WHERE ({targets}) IN "
                  f"(SELECT {names} FROM unnest({unnest}) AS u({names}))")
    stage = q(f"safemigrate_stage_{table.name}"[:63])
    with scratch.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE {stage} AS SELECT {columns} FROM {parent} WITH NO DATA")
    try:
        _stream(source, f"COPY ({select}) TO STDOUT", raw, f"COPY {stage} ({columns}) FROM STDIN", arrays)
        with scratch.cursor() as cursor:
            cursor.execute(f"INSERT INTO {parent} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM {stage} "
                           "ON CONFLICT DO NOTHING")
            return cursor.rowcount
    finally:
        with scratch.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {stage}")


def _close_foreign_keys(source, scratch, raw, fks, by_key, result, echo):
    """Add missing parents until every foreign key of the sample holds (see the module docstring)."""
    for round_number in range(1, MAX_ROUNDS + 1):
        added = 0
        for fk in fks:
            keys = _missing_parents(scratch, fk)
            if not keys:
                continue
            table = by_key[fk.parent]
            try:
                count = _fetch_parents(source, scratch, raw, fk, table, keys)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _unreadable(exc, f"table {table.label}") from None
            result.tables[table.label].added_for_foreign_keys += count
            added += count
        result.rounds = round_number
        if not added:
            return
        if echo:
            echo(f"  foreign keys, round {round_number}: {added:,} parent rows added")
    raise SourceUnreadable(f"The foreign-key closure of the sample did not settle in {MAX_ROUNDS} rounds.")


def empty_tables(scratch, tables):
    """Remove rows that replaying migrations created (data migrations), before the sample is loaded."""
    if tables:
        _ddl(scratch, truncate_sql(scratch, tables), tables[0][1])
