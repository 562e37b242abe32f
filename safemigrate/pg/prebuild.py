"""Index builds of atomic migrations, moved before the migration's transaction.

An atomic migration (Django's default, so every third-party migration and
every one written before safemigrate) runs in one transaction. A plain
``CREATE INDEX`` in it holds SHARE on the table for the whole build (every
write waits), and ``ADD CONSTRAINT ... UNIQUE`` builds its index under ACCESS
EXCLUSIVE (every read waits too). ``lock_timeout`` only bounds the wait for
the lock, not the build under it. ``CREATE INDEX CONCURRENTLY`` cannot run
inside a transaction, and the transaction cannot be split without losing
what atomicity gives (the migration is recorded in it; a failure rolls back
everything).

So the index is built first, CONCURRENTLY, under the name and definition
the migration would give it, before the transaction starts; inside the
transaction the ``CREATE INDEX`` is then skipped and ``ADD CONSTRAINT ...
UNIQUE (cols)`` becomes ``ADD CONSTRAINT ... UNIQUE USING INDEX`` (an instant
catalog change). Everything else runs in the transaction as before.

Which statements may move is decided from the SQL the migration would send
(collected as ``sqlmigrate`` does), in order. A statement stays inside
when the rest of the migration does not allow it:

- its table does not exist yet or has no rows (created in this migration,
  or nothing to stall: a build on an empty table is instant);
- an earlier statement of the migration changes that table, or runs Python
  or SQL whose targets cannot be told (the index must see the table as the
  transaction leaves it: a column added, a type changed, rows fixed);
- it is not one of the shapes with a concurrent equivalent (a foreign key or
  CHECK needs its NOT VALID constraint committed before VALIDATE, which would
  leave the migration half applied when killed; it stays, lock-bounded).

Re-runnable at every point: killed during a build, the next run drops the
INVALID leftover and builds again; killed after it, the next run finds the
valid index and uses it; the transaction commits the constraint together
with the migration's record. When the migration fails, the indexes built for
it are dropped again (concurrently), so the schema is as it was.
"""

import re
from dataclasses import dataclass, field

from django.db import DatabaseError

from . import catalog, rewrite, sql
from .classify import classify, normalize
from .ddl import run_unbounded

#: Operation class names whose SQL may hold an index build (either direction).
CANDIDATES = {"AddIndex", "RemoveIndex", "AddConstraint", "RemoveConstraint", "AlterUniqueTogether",
              "AlterIndexTogether", "AlterField", "RunSQL"}
#: Written by Migration.apply(collect_sql=True) for RunPython and the like.
_NOT_SQL = "CANNOT BE WRITTEN AS SQL"


@dataclass
class Prebuild:
    #: The statement as the migration sends it (normalized, for matching).
    statement: str
    table: str
    index: str
    #: CREATE [UNIQUE] INDEX CONCURRENTLY ...
    build: str
    #: What runs in the transaction instead (None: nothing).
    replacement: "str | None" = None
    #: Built (or found valid) before the transaction.
    ready: bool = False
    #: Met in the transaction (the statement arrived and was replaced).
    claimed: bool = False


@dataclass
class PrebuildPlan:
    builds: list = field(default_factory=list)
    #: Normalized statement -> why it stays inside the transaction.
    kept: dict = field(default_factory=dict)

    def claim(self, sql, unique_name):
        """The ready prebuild for ``sql`` (as sent in the transaction), or None.

        Matched by text, else by the index it would create (a statement sent
        with parameters reads differently from its collected form).
        """
        text = normalize(sql)
        index = None
        for build in self.builds:
            if not build.ready or build.claimed:
                continue
            if build.statement != text:
                if index is None:
                    movable = _movable(text, rewrite.plan(text, None, unique_name=unique_name))
                    index = movable[2] if movable else ""
                if index != build.index:
                    continue
            build.claimed = True
            return build
        return None

    def reason(self, sql):
        return self.kept.get(normalize(sql))


def has_candidates(migration):
    """Whether any operation could send an index build (cheap: avoids collecting SQL for the rest)."""
    def walk(operations):
        for operation in operations:
            if operation.__class__.__module__.startswith("safemigrate"):
                continue
            name = type(operation).__name__
            if name == "SeparateDatabaseAndState":
                yield from walk(operation.database_operations)
            else:
                yield name
    return not getattr(migration, "initial", False) and any(name in CANDIDATES for name in walk(migration.operations))


def collect(connection, state, migration, backwards):
    """The SQL ``migration`` would send, as ``sqlmigrate`` collects it (None when it cannot be told)."""
    try:
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            if backwards:
                migration.unapply(state.clone(), editor, collect_sql=True)
            else:
                migration.apply(state.clone(), editor, collect_sql=True)
    except Exception:  # an operation that cannot describe itself: nothing moves
        return None
    return list(editor.collected_sql)


def plan_statements(statements, table_ready, unique_name):
    """Which statements move before the transaction (a ``PrebuildPlan``); pure, from the SQL alone.

    ``table_ready(table)`` returns None when a build on the table may move,
    else the reason it may not (missing, empty).
    """
    plan = PrebuildPlan()
    changed = set()  # tables an earlier statement changed
    opaque = None  # why nothing later may move
    for raw in statements:
        if raw.lstrip().startswith("--"):
            if _NOT_SQL in raw:
                opaque = "an earlier operation of the migration runs Python (its effect cannot be told)"
            continue
        text = normalize(raw)
        if not text:
            continue
        info = classify(text)
        steps = rewrite.plan(text, None, unique_name=unique_name)
        movable = _movable(text, steps)
        why = None
        if movable is None:
            why = "no concurrent equivalent that can run before the transaction"
        elif opaque:
            why = opaque
        elif info.table in changed:
            why = f"an earlier statement of the migration changes {info.table}"
        else:
            why = table_ready(info.table)
        if movable is not None and why is None:
            build, replacement, index = movable
            plan.builds.append(Prebuild(text, info.table, index, build, replacement))
            continue
        if info.work:
            plan.kept[text] = why
        if info.table:
            changed.add(info.table)
        elif info.takes_lock:
            opaque = f"an earlier statement of the migration ({text[:60]}) may change any table"
    return plan


def _movable(text, steps):
    """``(build, replacement, index)`` for a plain index build or unique constraint, else None."""
    if not steps:
        return None
    first = steps[0]
    if first.kind != rewrite.CONCURRENT or not first.index or not re.match(r"CREATE (UNIQUE )?INDEX", first.sql, re.I):
        return None
    if len(steps) == 1 and re.match(r"CREATE (UNIQUE )?INDEX", text, re.I):
        return first.sql, None, first.index
    if len(steps) == 2 and re.match(r"ALTER TABLE .* ADD CONSTRAINT .* UNIQUE", text, re.I | re.S):
        return first.sql, steps[1].sql, first.index
    return None


def plan_migration(connection, state, migration, backwards):
    """The ``PrebuildPlan`` of one atomic migration about to run on ``connection`` (None: nothing to plan)."""
    if not has_candidates(migration):
        return None
    statements = collect(connection, state, migration, backwards)
    if statements is None:
        return None

    def unique_name(table, column):
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            return editor._create_index_name(table, [column], suffix="_uniq")

    plan = plan_statements(statements, table_checker(connection), unique_name)
    return plan if plan.builds or plan.kept else None


def table_checker(connection):
    """``table_ready`` for ``plan_statements``, asking ``connection``'s catalog and rows."""
    def table_ready(table):
        if not table or not catalog.table_exists(connection, table):
            return "the table is created in this migration"
        if not catalog.has_rows(connection, table):
            return "the table has no rows (the build is instant)"
        return None

    return table_ready


class _Runner:
    """The two attributes ``run_unbounded`` reads from a schema editor."""

    collect_sql = False

    def __init__(self, connection):
        self.connection = connection


def _validity(connection, name):
    state = catalog.index_state(connection, name)
    return None if state is None else state["valid"]


def _drop(connection, name):
    run_unbounded(_Runner(connection), sql.drop_index_concurrently(name).sql)


def build_all(connection, plan, report, label):
    """Build every planned index concurrently; one that fails stays in the transaction (as Django would run it)."""
    for build in plan.builds:
        state = _validity(connection, build.index)
        if state is False:
            _drop(connection, build.index)  # left INVALID by a killed run
        if state:
            build.ready = True  # built by an earlier, interrupted run
            report.warning(f"{label}: index {build.index} found built by an earlier run; the migration uses it")
            continue
        report.warning(f"{label}: built before the migration's transaction, concurrently, to keep traffic "
                       f"flowing: {build.build[:160]}")
        try:
            run_unbounded(_Runner(connection), build.build)
        except DatabaseError as exc:
            if _validity(connection, build.index) is not None:
                _drop(connection, build.index)
            plan.kept[build.statement] = f"its concurrent build failed ({str(exc).splitlines()[0][:120]})"
            report.warning(f"{label}: the concurrent build failed, so the statement runs in the transaction as "
                           f"written: {str(exc).splitlines()[0][:160]}")
            continue
        build.ready = True


def discard(connection, plan, report, label, unclaimed_only=False):
    """After a failed migration: drop the indexes built for it (its transaction committed none of them).

    ``unclaimed_only``: after a successful one, drop those its transaction
    never asked for (none, unless a statement read differently at run time).
    """
    for build in plan.builds:
        if unclaimed_only and build.claimed:
            continue
        if build.ready and _validity(connection, build.index) is not None:
            try:
                _drop(connection, build.index)
                why = "its transaction never asked for it" if unclaimed_only else "the migration failed"
                report.warning(f"{label}: {why}; index {build.index} built for it was dropped again")
            except DatabaseError as exc:
                report.warning(f"{label}: the migration failed and index {build.index} built for it could not be "
                               f"dropped ({exc}); drop it by hand or run the migration again (it will use it)")
