"""Safe schema changes on declaratively partitioned tables (``PARTITION BY RANGE / LIST / HASH``).

A partitioned table holds no rows itself; its partitions do. PostgreSQL refuses the
lock-friendly forms on the parent: ``CREATE INDEX CONCURRENTLY`` ("cannot create index
on partitioned table ... concurrently", every version up to 18), ``DROP INDEX
CONCURRENTLY``, ``ADD CONSTRAINT ... UNIQUE USING INDEX``, and, before PostgreSQL 18,
``ADD FOREIGN KEY ... NOT VALID``. The plain forms work on the parent but hold their lock
while they build or scan every partition. Each has a safe sequence made of steps
PostgreSQL allows, and each ends in exactly the schema the plain statement gives:

* **index** -- ``CREATE INDEX name ON ONLY parent`` (instant; the index is INVALID and
  covers no partition), then for each partition ``CREATE INDEX CONCURRENTLY`` with no
  name (PostgreSQL names it as it names the partitions' copies of a plain parent index)
  and ``ALTER INDEX name ATTACH PARTITION`` (instant). The parent index turns valid by
  itself once every partition's index is attached. A sub-partitioned partition gets its
  own ``ON ONLY`` index, completed the same way, then attached.
* **unique constraint** -- must include every partition key column (PostgreSQL's
  rule). Per partition: a unique index built concurrently, made a constraint with
  ``ADD CONSTRAINT ... UNIQUE USING INDEX`` (instant); then ``ADD CONSTRAINT ... UNIQUE``
  on the parent, which finds each partition's constraint and attaches it instead of
  building anything (instant).
* **foreign key from a partitioned table** -- PostgreSQL 18 accepts ``NOT VALID`` on the
  parent: that, then ``VALIDATE`` partition by partition, then on the parent (which only
  marks it). Before 18: per partition ``NOT VALID`` and ``VALIDATE``, then the plain
  ``ADD FOREIGN KEY`` on the parent, which attaches the validated constraints without a
  scan.
* **check constraint** (and ``SetNotNull``'s ``IS NOT NULL`` check) -- ``NOT VALID`` on
  the parent works on every version; ``VALIDATE`` runs partition by partition (each a
  resumable unit), then on the parent.
* **drop index** -- a partitioned index cannot be dropped concurrently (nor its
  partitions' indexes at all): a plain ``DROP INDEX``, instant, lock-bounded.

Every step asks the catalog first (``pg_inherits`` says which partition's index is
attached; an unattached index of the same definition on a partition is reused when
valid and rebuilt when a killed build left it INVALID), so a run killed at any point
finishes the job when run again. Partitions created or attached while it runs get
PostgreSQL's own copy of the parent index, constraint or trigger, already attached;
the loop looks again before it finishes.

Triggers (the dual-write triggers of a rename or type change), added, dropped and
renamed columns, ``SET NOT NULL`` and backfills need nothing special: PostgreSQL clones
row triggers to every partition (and to new ones), column changes recurse, and a
backfill's ``UPDATE`` on the parent is routed to the partitions. What they do need,
like every bounded step on a partitioned table, is the whole tree locked first
(``partition_tree.tree_lock``), which the runner does.

Where these sequences are used: the runner (``pg.runner``) hands a concurrent index
build, a ``VALIDATE`` and a concurrent index drop whose table is partitioned to
``run_concurrent``; the plan fragments (``pg.steps``) plan a unique constraint, and
before PostgreSQL 18 a foreign key, on a partitioned table as a ``Call`` of
``add_unique_constraint`` / ``add_foreign_key``; the execution path (``pg.execution``)
adapts plain Django SQL it rewrote (``adapt_rewrite``). Every statement comes from a
builder in ``pg.sql`` and declares its lock; bounded ones run through ``pg.ddl.run_ddl``
(the tree locked first unless the statement locks the parent alone: ``ON ONLY``,
``ATTACH``), concurrent ones through ``pg.ddl.run_unbounded``.
"""

import re

from django.db import DatabaseError

from ..exceptions import UnsafeOperationError
from . import catalog, sql
from .classify import IDENT, QUALIFIED, normalize, table_name
from .ddl import run_ddl, run_unbounded, sqlstate
from .locks import Lock
from .partition_tree import (  # noqa: F401  (re-exported: the catalog side of partitioned tables)
    QUALIFIED_NAME,
    describe,
    is_partitioned,
    key_columns,
    partitioned_tables,
    tree,
    tree_lock,
)
from .reporting import StepRecord
from .statements import Call, Skipped

UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
FK_VIOLATION = "23503"
#: PostgreSQL's NAMEDATALEN - 1.
MAX_NAME = 63
#: Rounds of "look again for partitions without the index" before giving up.
ROUNDS = 5

_CREATE_INDEX = re.compile(
    rf"^CREATE (UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?({IDENT}) ON (?:ONLY )?({QUALIFIED})(.*)$",
    re.I | re.S)
_INDEXDEF_TAIL = re.compile(rf"^CREATE (UNIQUE )?INDEX {IDENT} ON (?:ONLY )?{QUALIFIED} (USING .*)$", re.S)
_ALTER_TABLE = re.compile(rf"^ALTER TABLE (?:ONLY )?({QUALIFIED}) ", re.I)
_REFERENCES = re.compile(rf"\bREFERENCES ({QUALIFIED})", re.I)


class _Editor:
    """What the DDL runner reads of a schema editor, for callers that have only a connection."""

    collect_sql = False

    def __init__(self, connection):
        self.connection = connection

    def quote_name(self, name):
        return self.connection.ops.quote_name(name)


def editor_for(schema_editor_or_connection):
    return schema_editor_or_connection if hasattr(schema_editor_or_connection, "quote_name") and hasattr(
        schema_editor_or_connection, "connection") else _Editor(schema_editor_or_connection)


def _rows(connection, sql_text, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql_text, params)
        return cursor.fetchall()


def _bounded(editor, statements, *, table, record=None, whole_tree=True):
    """Builder ``statements`` in one short, lock-bounded transaction (``pg.ddl.run_ddl``).

    A partitioned ``table`` is locked whole first, in the statements' strongest
    declared mode (``partition_tree.tree_lock``), unless ``whole_tree=False``: the
    statement locks the parent alone (``CREATE INDEX ... ON ONLY``, ``ATTACH``).
    """
    statements = list(statements)
    if whole_tree:
        statements = tree_lock(editor.connection, table, max(s.lock for s in statements)) + statements
    run_ddl(editor, [(s.sql, s.params or None) for s in statements], table=table, record=record)


def _quoted(qualified):
    """A schema-qualified name from SQL text with every part quoted, as the builders expect it."""
    return ".".join(part if part.startswith('"') else f'"{part.lower()}"' for part in re.findall(IDENT, qualified))


def _unbounded(editor, statement):
    """A builder's CONCURRENTLY / VALIDATE statement, without timeouts (``pg.ddl.run_unbounded``)."""
    run_unbounded(editor, statement.sql, statement.params or None)


# -- the catalog ----------------------------------------------------------------------------


def supports_not_valid_foreign_key(connection):
    """PostgreSQL 18 accepts ``ADD FOREIGN KEY ... NOT VALID`` on a partitioned table; 17 and older refuse."""
    return connection.pg_version >= 180000


# -- index names as PostgreSQL gives them ---------------------------------------------------


def object_name(name1, name2, label):
    """PostgreSQL's rule for a generated name: ``name1_name2_label``, the longer part cut first, in 63 bytes."""
    one, two = name1.encode(), (name2 or "").encode()
    overhead = (len(label) + 1 if label else 0) + (1 if name2 else 0)
    available = MAX_NAME - overhead
    n1, n2 = len(one), len(two)
    while n1 + n2 > available:
        if n1 > n2:
            n1 -= 1
        else:
            n2 -= 1
    part1 = one[:n1].decode(errors="ignore")
    part2 = two[:n2].decode(errors="ignore")
    return part1 + (f"_{part2}" if name2 else "") + (f"_{label}" if label else "")


def _column_addition(columns):
    text = ""
    for column in columns:
        if text:
            text += "_"
        text += column
        if len(text.encode()) >= MAX_NAME:
            break
    return text


def choose_name(connection, schema, relation, columns, label):
    """The name PostgreSQL would pick for an index or constraint of ``relation`` on ``columns``.

    ``relation_cols_label``, and ``label1``, ``label2``... while the name is taken in the schema.
    """
    addition = _column_addition(columns)
    attempt = 0
    while True:
        name = object_name(relation, addition, f"{label}{attempt or ''}")
        taken = _rows(connection, "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                  "WHERE n.nspname = %s AND c.relname = %s", [schema, name])
        if not taken:
            return name
        attempt += 1


# -- indexes -----------------------------------------------------------------------------------


def _index_oid(connection, name):
    """The OID of the index ``name`` as the catalog resolves it (see ``catalog.index_state``)."""
    rows = _rows(connection, """
        SELECT c.oid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = %s AND pg_table_is_visible(t.oid)
         ORDER BY array_position(current_schemas(true), n.nspname::text) NULLS LAST LIMIT 1
    """, [name])
    return rows[0][0] if rows else None


def _index_info(connection, oid):
    rows = _rows(connection, f"""
        SELECT {QUALIFIED_NAME}, i.indisvalid, pg_get_indexdef(c.oid), i.indrelid,
               t.relname, c.relname
          FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class t ON t.oid = i.indrelid
         WHERE c.oid = %s
    """, [oid])
    qualified, valid, definition, table_oid, table, name = rows[0]
    return {"oid": oid, "qualified": qualified, "valid": valid, "definition": definition,
            "table_oid": table_oid, "table": table, "name": name}


def definition_tail(definition):
    """``UNIQUE``-ness and everything from ``USING`` on: an index's meaning without its name and table."""
    match = _INDEXDEF_TAIL.match(definition)
    return (bool(match.group(1)), match.group(2)) if match else (None, definition)


def _pending(connection, index_oid, table_oid):
    """Direct partitions of ``table_oid`` with no index attached to ``index_oid``."""
    rows = _rows(connection, f"""
        SELECT c.oid, {QUALIFIED_NAME}, c.relname, n.nspname, c.relkind = 'p'
          FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE h.inhparent = %s
           AND NOT EXISTS (SELECT 1 FROM pg_inherits hi JOIN pg_index x ON x.indexrelid = hi.inhrelid
                            WHERE hi.inhparent = %s AND x.indrelid = c.oid)
         ORDER BY c.relname
    """, [table_oid, index_oid])
    keys = ("oid", "qualified", "name", "schema", "partitioned")
    return [dict(zip(keys, row)) for row in rows]


def _candidates(connection, partition_oid, unique, tail):
    """Unattached indexes of a partition with exactly the parent index's definition: [(oid, qualified, valid)]."""
    rows = _rows(connection, f"""
        SELECT c.oid, {QUALIFIED_NAME}, i.indisvalid, pg_get_indexdef(c.oid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.indrelid = %s AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid)
         ORDER BY i.indisvalid DESC, c.oid
    """, [partition_oid])
    return [(oid, qualified, valid) for oid, qualified, valid, definition in rows
            if definition_tail(definition) == (unique, tail)]


class _Progress:
    def __init__(self, record):
        self.record, self.built, self.reused, self.rebuilt = record, 0, 0, 0

    def finish(self, connection, parent_table):
        if self.record is not None:
            parts = [f"{describe(connection, parent_table)}: {self.built} partition indexes built concurrently"]
            if self.reused:
                parts.append(f"{self.reused} reused")
            if self.rebuilt:
                parts.append(f"{self.rebuilt} INVALID leftovers rebuilt")
            self.record.detail = ", ".join(parts)


def _partition_index(editor, partition, unique, tail, table, progress):
    """A valid (or, on a sub-partitioned partition, partitioned) index of ``partition`` like the parent's.

    Returns its OID. Reuses an unattached one of the same definition; an INVALID one
    (a killed or failed concurrent build) is dropped and built again.
    """
    connection = editor.connection
    found = _candidates(connection, partition["oid"], unique, tail)
    for oid, qualified, valid in found:
        if valid:
            progress.reused += 1
            return oid
    for oid, qualified, valid in found:
        _unbounded(editor, sql.drop_index_concurrently(qualified, partition["qualified"]))
        progress.rebuilt += 1
    if partition["partitioned"]:
        _bounded(editor, [sql.create_index_on_only(partition["qualified"], tail, unique=unique)],
                 table=partition["qualified"], whole_tree=False)
    else:
        try:
            _unbounded(editor, sql.create_partition_index_concurrently(partition["qualified"], tail, unique=unique))
        except DatabaseError:
            # Leave no INVALID index behind: it would be maintained (and, if unique, checked) on every write.
            for oid, qualified, valid in _candidates(connection, partition["oid"], unique, tail):
                if not valid:
                    _unbounded(editor, sql.drop_index_concurrently(qualified, partition["qualified"]))
            raise
        progress.built += 1
    found = _candidates(connection, partition["oid"], unique, tail)
    return found[0][0]


def _complete(editor, index_oid, table, progress):
    """Give every partition under the index's table an attached index; sub-partitions first."""
    connection = editor.connection
    parent = _index_info(connection, index_oid)
    unique, tail = definition_tail(parent["definition"])
    for _ in range(ROUNDS):
        pending = _pending(connection, index_oid, parent["table_oid"])
        if not pending:
            return
        for partition in pending:
            child = _partition_index(editor, partition, unique, tail, table, progress)
            if partition["partitioned"]:
                _complete(editor, child, table, progress)
            _bounded(editor, [sql.attach_index(parent["qualified"], _index_info(connection, child)["qualified"],
                                               partition["qualified"])], table=table, whole_tree=False)
    if _pending(connection, index_oid, parent["table_oid"]):
        raise UnsafeOperationError(
            f"Index {parent['qualified']}: partitions of {table} kept appearing without it through {ROUNDS} "
            f"rounds of building; run the migration again once partitions are no longer being created.")


def build_index(schema_editor, create_sql, name, record=None, on_unique_violation=None):
    """Build the index ``create_sql`` describes on a partitioned table without blocking writes; re-runnable.

    ``create_sql`` is a ``CREATE [UNIQUE] INDEX [CONCURRENTLY] name ON table ...``
    statement (a declared one, Django's, or a rewritten one): its definition is
    kept as written (expressions, operator classes, a condition). Returns False
    when a valid index was already there.
    """
    editor = editor_for(schema_editor)
    connection = editor.connection
    unique, quoted_name, quoted_table, rest = _CREATE_INDEX.match(normalize(str(create_sql))).groups()
    table = table_name(quoted_table)
    oid = _index_oid(connection, name)
    if oid is not None and _index_info(connection, oid)["valid"]:
        if record is not None:
            record.skipped = True
        return False
    if oid is None:
        _bounded(editor, [sql.create_index_on_only(_quoted(quoted_table), rest, name=name, unique=bool(unique))],
                 table=table, record=record, whole_tree=False)
        oid = _index_oid(connection, name)
    progress = _Progress(record)
    try:
        _complete(editor, oid, table, progress)
    except DatabaseError as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            # Duplicates in one partition: take the whole index away again, as a failed
            # concurrent build on a plain table leaves nothing behind.
            drop_index(editor, name, table)
            if on_unique_violation:
                on_unique_violation(exc)
        raise
    progress.finish(connection, table)
    if not _index_info(connection, oid)["valid"]:
        raise UnsafeOperationError(
            f"Index {name} on {table}: every partition's index is attached but PostgreSQL still marks it "
            f"INVALID; run the migration again (it resumes), or check the partitions' indexes.")
    return True


def drop_index(schema_editor, name, table, record=None):
    """``DROP INDEX`` of a partitioned index: instant, lock-bounded (CONCURRENTLY is refused for it).

    Takes ACCESS EXCLUSIVE on the table and its partitions for the catalog change only.
    """
    _bounded(editor_for(schema_editor), [sql.drop_index(name, table)], table=table, record=record)
    return True


# -- unique constraints -------------------------------------------------------------------------


def _unique_constraint_of(connection, partition_oid, columns, nulls_not_distinct):
    """The partition's own (unattached) unique constraint on exactly ``columns``, or None."""
    nulls = "i.indnullsnotdistinct" if connection.pg_version >= 150000 else "false"
    rows = _rows(connection, f"""
        SELECT k.conname, k.conparentid <> 0
          FROM pg_constraint k JOIN pg_index i ON i.indexrelid = k.conindid
         WHERE k.conrelid = %s AND k.contype = 'u' AND {nulls} = %s AND i.indpred IS NULL
           AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY u(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum ORDER BY u.n)
               = %s::text[]
         ORDER BY 2
    """, [partition_oid, bool(nulls_not_distinct), list(columns)])
    return rows[0] if rows else None


def _require_partition_key(connection, table, name, columns):
    keys = key_columns(connection, table)
    missing = [key for key in keys if key is None or key not in columns]
    if missing:
        shown = ", ".join(key or "(an expression)" for key in keys)
        raise UnsafeOperationError(
            f"Cannot add unique constraint {name} on {table}({', '.join(columns)}): {table} is "
            f"{describe(connection, table)}, and PostgreSQL enforces uniqueness on a partitioned table only "
            f"for keys that include every partition key column ({shown}). Nothing of this constraint was built. "
            f"Safe routes: "
            f"include the partition key in the constraint (fields=[..., {', '.join(repr(k) for k in keys if k)}]), "
            f"or enforce uniqueness per partition with a unique index on each partition (RunSQL, CREATE UNIQUE "
            f"INDEX CONCURRENTLY ON <partition> ...)."
        )


def add_unique_constraint(schema_editor, table, name, columns, *, deferrable="", nulls_not_distinct=False,
                          record=None, on_unique_violation=None):
    """A UNIQUE constraint on a partitioned table without a long lock; re-runnable.

    Per partition: unique index built concurrently, made that partition's constraint
    ``USING INDEX`` (instant). Then the parent's ``ADD CONSTRAINT ... UNIQUE`` attaches
    them (instant, nothing to build). ``deferrable`` is the clause (``" DEFERRABLE
    INITIALLY DEFERRED"``) Django would write.
    """
    editor = editor_for(schema_editor)
    connection = editor.connection
    if catalog.constraint_state(connection, table, name) is not None:
        if record is not None:
            record.skipped = True
        return False
    _require_partition_key(connection, table, name, list(columns))
    progress = _Progress(record)
    made = []
    try:
        for _ in range(ROUNDS):
            partitions = [p for p in reversed(tree(connection, table))
                          if not _unique_constraint_of(connection, p["oid"], columns, nulls_not_distinct)]
            if not partitions:
                break
            for partition in partitions:  # deepest first: a sub-partitioned partition after its own
                label = choose_name(connection, partition["schema"], partition["name"], columns, "key")
                if not partition["leaf"]:
                    _bounded(editor, [sql.add_unique(partition["qualified"], label, columns, deferrable=deferrable,
                                                     nulls_not_distinct=nulls_not_distinct)],
                             table=partition["qualified"])
                    continue
                index = _partition_index(editor, {**partition, "partitioned": False}, True,
                                         _unique_tail(connection, columns, nulls_not_distinct), table, progress)
                _bounded(editor, [sql.add_unique_using_index(partition["qualified"], label,
                                                             _index_info(connection, index)["name"], deferrable)],
                         table=partition["qualified"])
                made.append((partition["qualified"], label))
        _bounded(editor, [sql.add_unique(table, name, columns, deferrable=deferrable,
                                         nulls_not_distinct=nulls_not_distinct)], table=table, record=record)
    except DatabaseError as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            # The partitions done so far would enforce uniqueness on their own: undo them.
            for qualified, label in made:
                _bounded(editor, [sql.drop_constraint(qualified, label)], table=qualified)
            if on_unique_violation:
                on_unique_violation(exc)
        raise
    progress.finish(connection, table)
    return True


def _unique_tail(connection, columns, nulls_not_distinct):
    """How ``pg_get_indexdef`` prints a plain unique btree index on ``columns`` (after the table name).

    ``quote_ident`` is the quoting ``pg_get_indexdef`` uses, so the text compares equal
    to the definition of an index built from it.
    """
    tail = _rows(connection, "SELECT 'USING btree (' || string_agg(quote_ident(c), ', ' ORDER BY n) || ')' "
                             "FROM unnest(%s::text[]) WITH ORDINALITY AS u(c, n)", [list(columns)])[0][0]
    return tail + (" NULLS NOT DISTINCT" if nulls_not_distinct else "")


# -- foreign keys and checks ----------------------------------------------------------------------


def _constraint(connection, relation_oid_or_name, name):
    """(validated, attached to a parent) of the constraint ``name`` on a relation, or None."""
    if isinstance(relation_oid_or_name, int):
        rows = _rows(connection, "SELECT convalidated, conparentid <> 0 FROM pg_constraint "
                                 "WHERE conrelid = %s AND conname = %s", [relation_oid_or_name, name])
    else:
        rows = _rows(connection, "SELECT convalidated, conparentid <> 0 FROM pg_constraint "
                                 "WHERE conrelid = to_regclass(%s) AND conname = %s",
                     [connection.ops.quote_name(relation_oid_or_name), name])
    return rows[0] if rows else None


def add_foreign_key(schema_editor, django_sql, table, name, record=None, on_violation=None):
    """A FOREIGN KEY from a partitioned table, checked without a long lock; re-runnable.

    ``django_sql`` is the plain ``ALTER TABLE ... ADD CONSTRAINT name FOREIGN KEY ...``
    (no ``NOT VALID``). PostgreSQL 18: ``NOT VALID`` on the parent, then validated
    partition by partition. Older: each partition gets it ``NOT VALID`` and validated,
    then the parent's plain ``ADD`` attaches them without scanning.
    """
    editor = editor_for(schema_editor)
    connection = editor.connection
    statement = normalize(str(django_sql))
    target = _REFERENCES.search(statement)
    target = table_name(target.group(1)) if target else None
    state = _constraint(connection, table, name)
    if state and state[0]:
        if record is not None:
            record.skipped = True
        return False
    try:
        if supports_not_valid_foreign_key(connection):
            if state is None:
                _bounded(editor, [sql.add_foreign_key_not_valid(statement, table, name, target)], table=table,
                         record=record)
            validate_constraint(editor, table, name)
            return True
        for _ in range(ROUNDS):
            partitions = [p for p in reversed(tree(connection, table))
                          if not (_constraint(connection, p["oid"], name) or (False,))[0]]
            if not partitions:
                break
            for partition in partitions:  # deepest first
                on_partition = sql.on_partition(statement, partition["qualified"])
                if not partition["leaf"]:
                    _bounded(editor, [sql.add_foreign_key(on_partition, partition["qualified"], name, target)],
                             table=partition["qualified"])
                    continue
                if _constraint(connection, partition["oid"], name) is None:
                    _bounded(editor, [sql.add_foreign_key_not_valid(on_partition, partition["qualified"], name,
                                                                    target)], table=partition["qualified"])
                _unbounded(editor, sql.validate_constraint(partition["qualified"], name))
        _bounded(editor, [sql.add_foreign_key(statement, table, name, target)], table=table, record=record)
    except DatabaseError as exc:
        if sqlstate(exc) == FK_VIOLATION:
            _drop_everywhere(editor, table, name)
            if on_violation:
                on_violation(exc)
        raise
    return True


def _drop_everywhere(editor, table, name):
    """Drop constraint ``name`` from the table and from every partition that has its own."""
    connection = editor.connection
    _bounded(editor, [sql.drop_constraint(table, name)], table=table)
    for partition in reversed(tree(connection, table)):
        state = _constraint(connection, partition["oid"], name)
        if state is not None and not state[1]:
            _bounded(editor, [sql.drop_constraint(partition["qualified"], name)], table=partition["qualified"])


def validate_constraint(schema_editor, table, name, on_violation=None, record=None):
    """VALIDATE a NOT VALID constraint of a partitioned table one partition at a time, then the parent.

    Each partition's validation is its own unit: a run killed half-way resumes with the
    partitions still unvalidated. The parent's own VALIDATE then only marks it (its
    partitions are done). SHARE UPDATE EXCLUSIVE throughout: reads and writes continue.
    """
    editor = editor_for(schema_editor)
    connection = editor.connection
    state = _constraint(connection, table, name)
    if state is None or state[0]:
        if record is not None:
            record.skipped = True
        return False
    validated = 0
    try:
        for partition in reversed(tree(connection, table)):
            child = _constraint(connection, partition["oid"], name)
            if partition["leaf"] and child is not None and not child[0]:
                _unbounded(editor, sql.validate_constraint(partition["qualified"], name))
                validated += 1
        _unbounded(editor, sql.validate_constraint(table, name))
    except DatabaseError as exc:
        if sqlstate(exc) in (CHECK_VIOLATION, FK_VIOLATION) and on_violation:
            on_violation(exc)
        raise
    if record is not None:
        record.detail = f"{describe(connection, table)}: {validated} partitions validated one at a time"
    return True


# -- where plans meet a partitioned table (pg.runner, pg.steps) ---------------------------------------


def run_concurrent(schema_editor, statement, record=None):
    """Run a declared CONCURRENT statement the partition-safe way when its table is partitioned.

    For the runner: an index build (``statement.index``) is built ``ON ONLY`` the
    parent and partition by partition, a ``VALIDATE`` (``statement.validates``)
    validated one partition at a time, and a concurrent drop of a partitioned index
    (``statement.drops_index``) becomes the bounded plain ``DROP INDEX``. Returns
    False (nothing done) when the statement is none of these or its table is not
    partitioned: the runner then runs it as it is.
    """
    connection = schema_editor.connection
    if statement.drops_index:
        state = catalog.index_state(connection, statement.drops_index)
        if not (state and state["partitioned"]):
            return False
        drop_index(schema_editor, statement.drops_index, state["table"], record)
    elif not (statement.table and is_partitioned(connection, statement.table)):
        return False
    elif statement.index:
        build_index(schema_editor, statement.sql, statement.index, record)
    elif statement.validates:
        validate_constraint(schema_editor, statement.table, statement.validates, record=record)
    else:
        return False
    if record is not None:
        record.step = f"{record.step}, partition by partition"
    return True


def _as_call(label, table, action):
    """A plan ``Call`` running one of the sequences above; its report line says what the sequence recorded.

    Declared SHARE UPDATE EXCLUSIVE: what it holds while it works (concurrent builds,
    validations); its instant ACCESS EXCLUSIVE steps each declare their own lock and
    run bounded, the tree locked first.
    """
    def function(_connection):
        record = StepRecord(operation="", step=label)
        if action(record) is False:
            return Skipped(record.detail or "already there")
        return record.detail
    return Call(label, function, lock=Lock.SHARE_UPDATE_EXCLUSIVE, table=table)


def unique_plan(schema_editor, table, name, columns, *, deferrable="", nulls_not_distinct=False,
                on_duplicates=None):
    """The plan of a unique constraint on a partitioned table (``pg.steps.add_unique_via_index``)."""
    return [_as_call(f"unique {name}, partition by partition", table, lambda record: add_unique_constraint(
        schema_editor, table, name, columns, deferrable=deferrable, nulls_not_distinct=nulls_not_distinct,
        record=record, on_unique_violation=on_duplicates))]


def foreign_key_plan(schema_editor, django_sql, table, name):
    """The plan of a foreign key from a partitioned table before PostgreSQL 18 (``pg.steps.add_foreign_key``)."""
    return [_as_call(f"foreign key {name}, partition by partition", table, lambda record: add_foreign_key(
        schema_editor, django_sql, table, name, record))]


# -- what cannot be done on a partitioned table ------------------------------------------------------


def refuse_primary_key_swap(connection, table):
    """``ChangePrimaryKeyToBigint`` swaps the key ``USING INDEX``, which PostgreSQL refuses on partitioned tables."""
    if not is_partitioned(connection, table):
        return
    raise UnsafeOperationError(
        f"Cannot widen the primary key of {table} to bigint in place: {table} is "
        f"{describe(connection, table)}, and the swap re-creates the primary key USING INDEX, which PostgreSQL "
        f"does not allow on a partitioned table (nor CREATE INDEX CONCURRENTLY on it). Nothing was changed. "
        f"Safe sequence: create a new partitioned table with a bigint key and the same partitions, copy "
        f"partition by partition (a Backfill per partition, or INSERT ... SELECT in batches) while a trigger "
        f"mirrors writes, then swap the names in one short transaction (RenameModelWithView); or, when the key "
        f"is far from the int limit, detach old partitions and create new ones with a bigint key as they roll over."
    )


# -- plain Django SQL, rewritten by the execution path (pg.execution, pg.rewrite) ------------------

#: ``kind`` of a rewritten step replaced by its partition-safe sequence.
PARTITIONED = "partitioned"
_FOREIGN_KEY = re.compile(rf"^ALTER TABLE (?:ONLY )?({QUALIFIED}) ADD CONSTRAINT ({IDENT}) FOREIGN KEY .* NOT VALID$",
                          re.I | re.S)
_USING_INDEX = re.compile(rf"^ALTER TABLE (?:ONLY )?{QUALIFIED} ADD CONSTRAINT ({IDENT}) UNIQUE USING INDEX {IDENT}"
                          rf"( DEFERRABLE INITIALLY (?:DEFERRED|IMMEDIATE))?$", re.I | re.S)
_VALIDATE = re.compile(rf"^ALTER TABLE (?:ONLY )?({QUALIFIED}) VALIDATE CONSTRAINT ({IDENT})$", re.I | re.S)


class PartitionedStep:
    """A rewritten step replaced by the partition-safe sequence ``run(connection)`` performs."""

    kind = PARTITIONED
    params = None
    index = None

    def __init__(self, statement_sql, action):
        self.sql = statement_sql
        self._action = action

    def run(self, connection):
        return self._action(_Editor(connection))


def _names(column_list):
    return [table_name(ident) for ident in re.findall(IDENT, column_list)]


def adapt_rewrite(connection, steps):
    """The rewritten steps of one plain statement (``pg.rewrite.plan``), safe on a partitioned table.

    ``CREATE INDEX CONCURRENTLY`` becomes the per-partition build, the ``USING INDEX``
    unique pair the per-partition constraint, the ``NOT VALID`` foreign key and its
    ``VALIDATE`` the per-partition sequence, and a ``VALIDATE`` of a check the
    per-partition validation. Steps on a table that is not partitioned are returned
    unchanged (one catalog look-up).
    """
    table = next((info for info in (_step_table(step.sql) for step in steps) if info), None)
    if table is None or not is_partitioned(connection, table):
        return steps
    adapted, index = [], 0
    while index < len(steps):
        step = steps[index]
        text = normalize(step.sql)
        following = normalize(steps[index + 1].sql) if index + 1 < len(steps) else ""
        create = _CREATE_INDEX.match(text)
        foreign = _FOREIGN_KEY.match(text)
        validate = _VALIDATE.match(text)
        if create and create.group(1) and _USING_INDEX.match(following):
            name = table_name(create.group(2))
            rest = create.group(4)
            columns = _names(rest[rest.index("(") + 1:rest.index(")")])
            nulls = "NULLS NOT DISTINCT" in rest.upper()
            deferrable = _USING_INDEX.match(following).group(2) or ""
            adapted.append(PartitionedStep(text, lambda editor, name=name, columns=columns, nulls=nulls,
                                           deferrable=deferrable: add_unique_constraint(
                                               editor, table, name, columns, deferrable=f" {deferrable.strip()}"
                                               if deferrable else "", nulls_not_distinct=nulls)))
            index += 2
            continue
        if create:
            name = table_name(create.group(2))
            adapted.append(PartitionedStep(text, lambda editor, text=text, name=name: build_index(editor, text, name)))
        elif foreign and _VALIDATE.match(following):
            name = table_name(foreign.group(2))
            plain = re.sub(r"\s+NOT VALID$", "", text, flags=re.I)
            adapted.append(PartitionedStep(text, lambda editor, plain=plain, name=name: add_foreign_key(
                editor, plain, table, name)))
            index += 2
            continue
        elif validate:
            name = table_name(validate.group(2))
            adapted.append(PartitionedStep(text, lambda editor, name=name: validate_constraint(editor, table, name)))
        else:
            adapted.append(step)
        index += 1
    return adapted


def _step_table(statement_sql):
    text = normalize(statement_sql)
    match = _CREATE_INDEX.match(text)
    if match:
        return table_name(match.group(3))
    match = _ALTER_TABLE.match(text)
    return table_name(match.group(1)) if match else None



