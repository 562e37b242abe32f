"""Rename windows: what the rest of safemigrate must know while one is open.

Between the expand and the contract of a rename through a view
(``safemigrate.operations.rename_view``), the model's table name is a view
and the rows live in a base table under a private name (the window as data:
``pg.views``; its statements: the ``window_*`` builders in ``pg.sql``). The
view's comment marks it, so a window is a fact of the database: any
process, any later release, a re-run after a kill, finds it with one
catalog query (``pg.catalog.rename_window`` / ``rename_windows``).

Everything that sends DDL meets that state here, in one place:

- ``execute_statement`` runs one statement: DDL that names the window's
  table (an ``ALTER TABLE``, ``CREATE INDEX``, a trigger, a foreign key's
  ``REFERENCES``, a comment, ``TRUNCATE``) is pointed at the base table;
  a statement that changes the base table's column list or types (a column
  added, dropped, renamed or retyped; grants) drops the view first and
  creates it again afterwards from the catalog, in the same transaction, so
  both code versions see the change at commit and never a missing view.
  A few statements cannot be made right and stop with the safe sequence
  instead (renaming or dropping the table, dropping the view). Declared
  statements reach it through the one runner (``pg.runner`` ->
  ``pg.ddl.run_ddl`` / ``run_unbounded``), SQL nobody declared through
  the execution path (``pg.execution``, every statement of a ``migrate``
  run).
- ``pg.catalog.resolve`` names the base table for a window's name;
  ``pg.catalog``'s look-ups and Django's introspection during a ``migrate``
  run (``resolving_introspection``) use it, because a view has no indexes,
  constraints or sequences of its own.
- ``why_not`` says why a table cannot get a window (partitioned, inherited,
  other views or rules on it, row-level security without
  ``security_invoker``, a trigger function that reads the column by name).
- ``open_statements`` & co. build the statements that open, change and
  close a window; they name the view and the base table on purpose, so
  they are declared ``as_written`` and run as they are.
"""

import contextlib
import contextvars
import re
from dataclasses import dataclass, field

from django.db import transaction

from ..conf import conf
from ..exceptions import UnsafeOperationError
from . import catalog, views
from .classify import classify_script, split_statements
from .locks import Lock
from .statements import DeclaredSQL, Statement
from .sql import lock_table, window_drop_view, window_rename_column, window_rename_table, window_view, \
    window_view_extras
from .views import Window

_verbatim = contextvars.ContextVar("safemigrate_window_verbatim", default=False)

#: First words of statements that may name a window's table as a DDL target.
_DDL_HEADS = ("ALTER", "CREATE", "DROP", "COMMENT", "GRANT", "REVOKE", "LOCK", "TRUNCATE", "DO")

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'


@contextlib.contextmanager
def verbatim():
    """Send statements as written: what reads or rebuilds a window names its view and base table on purpose."""
    token = _verbatim.set(True)
    try:
        yield
    finally:
        _verbatim.reset(token)


# -- reading the catalog -------------------------------------------------------------


def _rows(connection, sql, params=None):
    with verbatim(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def relation_facts(connection, relation):
    """What a view over ``relation`` needs from it: columns, owner, privileges, column comments."""
    quoted = connection.ops.quote_name(relation)
    columns = [name for (name,) in _rows(connection, """
        SELECT attname FROM pg_attribute
         WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum""", [quoted])]
    owner = _rows(connection, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%s)",
                  [quoted])
    grants = _rows(connection, """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner
         ORDER BY 1, 2""", [quoted])
    column_grants = _rows(connection, """
        SELECT t.attname, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               a.privilege_type, a.is_grantable
          FROM pg_attribute t, aclexplode(t.attacl) a
         WHERE t.attrelid = to_regclass(%s) AND t.attnum > 0 AND NOT t.attisdropped AND t.attacl IS NOT NULL
         ORDER BY 1, 2, 3""", [quoted])
    comments = _rows(connection, """
        SELECT a.attname, d.description
          FROM pg_description d
          JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
         WHERE d.objoid = to_regclass(%s) AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0
         ORDER BY 1""", [quoted])
    return {"columns": columns, "owner": owner[0][0] if owner else None, "grants": grants,
            "column_grants": column_grants, "comments": comments}


def security_invoker_supported(connection):
    """PostgreSQL 15+ can make a view check privileges and row-level security for the querying role."""
    return connection.pg_version >= 150000


def view_statements(connection, view, base, facts, aliases, renames=None, security_invoker=None):
    """``CREATE VIEW`` + what it does not inherit (statements), for ``facts`` read from the table.

    ``renames`` maps columns as ``facts`` knew them to their names in the
    base table (at expand the facts are read before the column is renamed).
    ``security_invoker`` None: ask the database (``security_invoker_supported``).
    """
    renames = renames or {}
    columns = [renames.get(column, column) for column in facts["columns"]]
    shown = views.visible_aliases(columns, aliases)
    by_column = {}
    for alias, column in shown:
        by_column.setdefault(column, []).append(alias)
    column_grants = []
    for column, grantee, privilege, grantable in facts["column_grants"]:
        column = renames.get(column, column)
        for name in [column, *by_column.get(column, [])]:
            column_grants.append((name, grantee, privilege, grantable))
    comments = []
    for column, comment in facts["comments"]:
        column = renames.get(column, column)
        comments += [(name, comment) for name in [column, *by_column.get(column, [])]]
    if security_invoker is None:
        security_invoker = security_invoker_supported(connection)
    return [window_view(view, base, columns, shown, security_invoker=security_invoker),
            *window_view_extras(view, views.marker(base, aliases), owner=facts["owner"], grants=facts["grants"],
                                column_grants=column_grants, column_comments=comments)]


# -- can this table get a window? -----------------------------------------------------


def why_not(connection, table, column):
    """Why ``table`` cannot be renamed through a view (a sentence), or None when it can.

    Checked at ``makemigrations --safe`` (when the database is reachable)
    and again by the operation at ``migrate``, on the database it runs on.
    """
    window = catalog.rename_window(connection, table)
    relation = window.base if window else table
    quoted = connection.ops.quote_name(relation)
    row = _rows(connection, "SELECT c.relkind, c.relrowsecurity, c.relispartition, c.relhassubclass, "
                            "EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) "
                            "FROM pg_class c WHERE c.oid = to_regclass(%s)", [quoted])
    if not row:
        return None  # nothing to look at (the migration will say what is missing)
    relkind, rls, is_partition, has_children, inherits = row[0]
    if relkind == "p":
        return f"{table} is a partitioned table"
    if relkind != "r":
        return f"{table} is not a plain table (relkind {relkind!r})"
    if is_partition or has_children or inherits:
        return f"{table} takes part in table inheritance or partitioning"
    if rls and not security_invoker_supported(connection):
        return (f"{table} has row-level security, and PostgreSQL before 15 cannot make a view check it "
                f"for the querying role (security_invoker)")
    dependents = [name for (name,) in _rows(connection, """
        SELECT DISTINCT v.oid::regclass::text
          FROM pg_depend d
          JOIN pg_rewrite r ON r.oid = d.objid
          JOIN pg_class v ON v.oid = r.ev_class
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass(%s)
           AND v.oid <> to_regclass(%s) AND v.oid <> COALESCE(to_regclass(%s), 0)
         ORDER BY 1""", [quoted, quoted, connection.ops.quote_name(table) if window else quoted])]
    if dependents:
        return f"views or rules depend on {table} ({', '.join(dependents)})"
    rules = [name for (name,) in _rows(connection, "SELECT rulename FROM pg_rewrite WHERE ev_class = "
                                                   "to_regclass(%s) AND rulename <> '_RETURN'", [quoted])]
    if rules:
        return f"{table} has rules ({', '.join(rules)})"
    word = re.compile(rf"(?<![\w$]){re.escape(column)}(?![\w$])", re.I)
    for trigger, function, source in _rows(connection, """
            SELECT t.tgname, p.proname, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
             WHERE t.tgrelid = to_regclass(%s) AND NOT t.tgisinternal ORDER BY 1""", [quoted]):
        if word.search(source or ""):
            return (f"trigger {trigger} on {table} runs {function}(), which names column {column} in its "
                    f"code; a view keeps the old name for queries, not inside trigger functions")
    return None


# -- statements that name a window ---------------------------------------------------


def _name(view):
    """A pattern for ``view`` as SQL may spell it: quoted, or bare when its spelling allows."""
    quoted = "(?-i:" + re.escape('"' + view.replace('"', '""') + '"') + ")"
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", view):
        return rf"(?:{quoted}|{re.escape(view)})"
    return quoted


_SCHEMA = rf"(?:{_IDENT}\.)?"
_END = r'(?![\w$"])'


def _targets(view):
    """Patterns whose group ``name`` is a DDL reference to ``view`` as a table."""
    name = rf"{_SCHEMA}(?P<name>{_name(view)}){_END}"
    flags = re.I | re.S
    return [
        re.compile(rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{name}", flags),
        re.compile(rf"\bON\s+(?:TABLE\s+)?(?:ONLY\s+)?{name}(?!\s*\.)", flags),
        re.compile(rf"\bREFERENCES\s+{name}", flags),
        re.compile(rf"\bCOMMENT\s+ON\s+COLUMN\s+{name}(?=\s*\.)", flags),
        re.compile(rf"\bOWNED\s+BY\s+{name}(?=\s*\.)", flags),
        re.compile(rf"(?:^|;)\s*LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?{name}", flags),
        re.compile(rf"(?:^|;)\s*TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?{name}", flags),
    ]


def _refusal(view, text):
    """Why a statement naming ``view`` cannot run during the window (None: it can)."""
    name = rf"{_SCHEMA}{_name(view)}{_END}"
    alter = rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{name}\s+"
    if re.search(alter + r"RENAME\s+TO\b", text, re.I) or re.search(alter + r"SET\s+SCHEMA\b", text, re.I):
        return "renames or moves the table"
    if re.search(rf"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:{_IDENT}(?:\.{_IDENT})?\s*,\s*)*{name}", text, re.I):
        return "drops the table"
    if re.search(rf"\b(?:DROP|ALTER)\s+VIEW\s+(?:IF\s+EXISTS\s+)?(?:{_IDENT}(?:\.{_IDENT})?\s*,\s*)*{name}",
                 text, re.I):
        return "changes or drops the window's view"
    return None


#: ALTER TABLE actions that change the column list or a column's type (the view must follow).
_COLUMN_CHANGE = re.compile(
    r"\b(?:ADD|DROP)\s+COLUMN\b"
    r"|\bRENAME\s+(?:COLUMN\s+)?(?!TO\b|CONSTRAINT\b)\S+\s+TO\b"
    r"|\bALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b"
    r"|\bADD\s+(?!COLUMN\b|CONSTRAINT\b|PRIMARY\b|UNIQUE\b|CHECK\b|FOREIGN\b|EXCLUDE\b|GENERATED\b)[\w\"]"
    r"|\bDROP\s+(?!COLUMN\b|CONSTRAINT\b|NOT\b|DEFAULT\b|IDENTITY\b|EXPRESSION\b)[\w\"]",
    re.I,
)
_RENAME_COLUMN = re.compile(rf"\bRENAME\s+(?:COLUMN\s+)?(?!TO\b|CONSTRAINT\b)({_IDENT})\s+TO\s+({_IDENT})", re.I)


@dataclass
class _Plan:
    sql: str
    #: Windows whose view is dropped before the statement and created again after it.
    rebuild: list
    #: Column renames the statement makes in each rebuilt window's base table.
    renames: dict
    #: Windows whose base table the statement targets.
    targets: list = field(default_factory=list)


def _unquote(identifier):
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def plan(sql, windows):
    """How ``sql`` runs with ``windows`` open: None when it names none of them.

    Raises ``UnsafeOperationError`` for a statement that cannot run during
    a window.
    """
    mentioned = [w for name, w in windows.items() if name.lower() in sql.lower()]
    if not mentioned:
        return None
    text, rebuild, renames, targets = sql, [], {}, []
    for window in mentioned:
        why = _refusal(window.view, text)
        if why:
            raise UnsafeOperationError(
                f"This statement {why} while a rename window is open on it ({window.describe()}): "
                f"{' '.join(sql.split())[:200]!r}. Running it would strand the window's view or base "
                f"table. Safe sequence: apply the pending contract migration that finishes the rename "
                f"first (migrate_contract), then run this migration.")
        heads = _heads(text)
        changed = False
        for pattern in _targets(window.view):
            def swap(match, base=window.base):
                start, end = match.start("name") - match.start(), match.end("name") - match.start()
                whole = match.group(0)
                return whole[:start] + '"' + base.replace('"', '""') + '"' + whole[end:]
            text, count = pattern.subn(swap, text)
            changed = changed or bool(count)
        if not changed:
            continue
        targets.append(window)
        alter_rest = _alter_rest(text, window.base)
        if heads & {"GRANT", "REVOKE"} or (alter_rest is not None and _COLUMN_CHANGE.search(alter_rest)):
            rebuild.append(window)
            if alter_rest:
                renames[window.view] = {_unquote(a): _unquote(b) for a, b in _RENAME_COLUMN.findall(alter_rest)}
    return _Plan(text, rebuild, renames, targets) if text != sql or rebuild else None


def _alter_rest(text, base):
    match = re.search(rf'\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_SCHEMA}'
                      rf'{re.escape(chr(34) + base.replace(chr(34), chr(34) * 2) + chr(34))}\s+(.*)$',
                      text, re.I | re.S)
    return match.group(1) if match else None


def _heads(sql):
    """The first word of each statement of ``sql`` (comments skipped), upper case.

    Every statement counts, not only the first: Django removes a foreign key
    with one text of two, ``SET CONSTRAINTS "fk" IMMEDIATE; ALTER TABLE "t"
    DROP CONSTRAINT "fk"``, whose DDL comes second (it went to the view).
    """
    return {statement.split(None, 1)[0].upper() for statement in split_statements(sql)}


def _first_head(sql):
    text = sql.lstrip()
    while text.startswith("--") or text.startswith("/*"):
        text = text.split("\n", 1)[1].lstrip() if text.startswith("--") and "\n" in text else (
            text.split("*/", 1)[1].lstrip() if "*/" in text else "")
    return text[:10].split(None, 1)[0].upper() if text else ""


def _is_ddl(sql):
    """Whether any statement of ``sql`` is DDL (the first word of the first one decides most texts cheaply)."""
    if _first_head(sql) in _DDL_HEADS:
        return True
    return ";" in sql.strip().rstrip(";") and bool(_heads(sql) & set(_DDL_HEADS))


def execute_statement(connection, run, sql, params=None):
    """Run ``sql`` through ``run(sql, params)``, pointed at base tables of open windows.

    See the module docstring. A statement safemigrate declared arrives as
    ``DeclaredSQL`` (from the runner, through ``pg.ddl``): its declared lock
    decides the lock order, and a retargeted text stays ``DeclaredSQL``; SQL
    nobody declared (the execution path) is read by the classifier.
    Statements that are not DDL, a window's own (``as_written``), or any
    sent ``verbatim``, go straight to ``run``.
    """
    declared = sql.statement if isinstance(sql, DeclaredSQL) and isinstance(sql.statement, Statement) else None
    if declared is not None and declared.as_written:
        with verbatim():
            return run(sql, params)
    if _verbatim.get() or not isinstance(sql, str) or connection.vendor != "postgresql" or not _is_ddl(sql):
        return run(sql, params)
    windows = catalog.rename_windows(connection)
    steps = plan(sql, windows) if windows else None
    if steps is not None and connection.in_atomic_block and _locks_view_first(sql, steps, declared):
        with verbatim(), connection.cursor() as cursor:
            for window in sorted(steps.targets, key=lambda w: w.view):
                cursor.execute(lock_table(window.view).sql)
    if steps is not None and declared is not None:
        steps.sql = DeclaredSQL(steps.sql, declared)
    if steps is None or not steps.rebuild:
        # verbatim: an execute wrapper further down (pg.execution) need not look again
        with verbatim():
            return run(sql if steps is None else steps.sql, params)
    context = transaction.atomic(using=connection.alias) if not connection.in_atomic_block else contextlib.nullcontext()
    with context, verbatim():
        with connection.cursor() as cursor:
            if not connection.get_autocommit() and not _has_lock_timeout(cursor):
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(conf.lock_timeout_ms)}ms"])
            for window in steps.rebuild:
                cursor.execute(window_drop_view(window.view).sql)
        result = run(steps.sql, params)
        with connection.cursor() as cursor:
            for window in steps.rebuild:
                renames = steps.renames.get(window.view, {})
                aliases = [(alias, renames.get(column, column)) for alias, column in window.aliases]
                for statement in view_statements(connection, window.view, window.base,
                                                 relation_facts(connection, window.base), aliases):
                    cursor.execute(statement.sql, list(statement.params) or None)
    return result


def _locks_view_first(sql, steps, declared=None):
    """Whether to lock the window's view before a statement on its base table (lock order).

    Queries through the view lock the view, then the base table. A
    transaction that locks the base table first and the view later (a swap
    that drops a column after dropping a trigger, a Django migration with
    several ALTERs) would wait for a query that waits for it: a deadlock,
    cut short by lock_timeout and retried forever. So a transaction takes
    the view first (``LOCK TABLE`` on a view locks the base table too, in
    that order) before any lock-taking statement on the base table, also
    one that may work under its lock (``SET NOT NULL``, a type change): its
    ACCESS EXCLUSIVE on the base table stops the view's queries anyway. Not
    before a plain index build or a validation, under which reads go on: the
    view's lock would stop them for the whole build.
    """
    if not steps.targets:
        return False
    if declared is not None:
        return declared.lock >= Lock.SHARE_ROW_EXCLUSIVE
    info = classify_script(sql)
    if not info.takes_lock or not info.in_transaction:
        return False
    return info.lock not in (Lock.SHARE_UPDATE_EXCLUSIVE, Lock.SHARE)


def _has_lock_timeout(cursor):
    cursor.execute("SELECT setting::bigint BETWEEN 1 AND %s FROM pg_settings WHERE name = 'lock_timeout'",
                   [int(conf.lock_timeout_ms)])
    return cursor.fetchone()[0]


@contextlib.contextmanager
def resolving_introspection(connection):
    """Django's introspection looks up a window's name in its base table (during a ``migrate`` run).

    Django's schema editor finds the constraints, sequences and keys it
    changes by asking the introspection for the model's table; a view has
    none of them.
    """
    introspection = connection.introspection
    patched = []
    for name in ("get_constraints", "get_table_description", "get_sequences", "get_relations",
                 "get_primary_key_column", "get_primary_key_columns"):
        original = getattr(introspection, name, None)
        if original is None or name in vars(introspection):
            continue

        def resolved(cursor, table_name, *args, _original=original, **kwargs):
            return _original(cursor, catalog.resolve(connection, table_name), *args, **kwargs)

        setattr(introspection, name, resolved)
        patched.append(name)
    try:
        yield
    finally:
        for name in patched:
            delattr(introspection, name)


# -- opening, changing and closing a window (statements, each ``as_written``) -------------
#
# The operations (``operations.rename_view``) put each list in one
# ``Transaction``: ACCESS EXCLUSIVE on the table (or view) for an instant,
# catalog changes only, bounded by lock_timeout and retried by the runner.


def _state_facts(columns):
    """Facts for SQL collected without a database (``sqlmigrate``, ``--plan``): columns only."""
    return {"columns": list(columns), "owner": None, "grants": [], "column_grants": [], "comments": []}


def open_statements(connection, table, old, new, *, state_columns=None):
    """Expand: the view shows ``old`` as an alias of the column renamed to ``new``.

    A table without a window: rename it to its private name, rename the
    column, create the view. A table already in a window (a second rename):
    rename the base table's column and create the view again with one alias
    more. ``state_columns`` (the table's columns before the rename, from the
    migration state) stands in for the catalog when SQL is only collected;
    the database is not asked then, and the view shown is the one the
    supported PostgreSQL versions (15+) get.
    """
    window = None if state_columns is not None else catalog.rename_window(connection, table)
    if window is None:
        base = views.base_name(table)
        collected = state_columns is not None
        facts = _state_facts(state_columns) if collected else relation_facts(connection, table)
        return [window_rename_table(table, base), window_rename_column(base, old, new),
                *view_statements(connection, table, base, facts, [(old, new)], renames={old: new},
                                 security_invoker=True if collected else None)]
    aliases = [(alias, new if column == old else column) for alias, column in window.aliases if alias != old]
    aliases.append((old, new))
    return [window_drop_view(table), window_rename_column(window.base, old, new),
            *view_statements(connection, table, window.base, relation_facts(connection, window.base), aliases,
                             renames={old: new})]


def undo_open_statements(connection, table, old, new):
    """Reverse of ``open_statements``: the column gets its old name back; the window closes when no alias is left."""
    window = catalog.rename_window(connection, table)
    if window is None:
        return []
    remaining = [(alias, old if column == new else column) for alias, column in window.aliases if alias != old]
    statements = [window_drop_view(table), window_rename_column(window.base, new, old)]
    if not remaining:
        return statements + [window_rename_table(window.base, table)]
    return statements + view_statements(connection, table, window.base, relation_facts(connection, window.base),
                                        remaining, renames={new: old})


def close_statements(connection, table, old):
    """Contract: the alias ``old`` goes; with the last alias the view goes and the table gets its name back.

    ACCESS EXCLUSIVE on the view (and on the base table for its rename
    back), catalog only. [] when the alias is already gone. Without a
    database (``connection`` None: SQL collected) the last alias is assumed.
    """
    if connection is None:
        return [window_drop_view(table), window_rename_table(views.base_name(table), table)]
    window = catalog.rename_window(connection, table)
    if window is None or old not in {alias for alias, _ in window.aliases}:
        return []
    remaining = [(alias, column) for alias, column in window.aliases if alias != old]
    if not remaining:
        return [window_drop_view(table), window_rename_table(window.base, table)]
    return [window_drop_view(table),
            *view_statements(connection, table, window.base, relation_facts(connection, window.base), remaining)]


def reopen_statements(connection, table, old, new):
    """Reverse of ``close_statements``: the view shows ``old`` again (opening the window if it closed)."""
    window = catalog.rename_window(connection, table)
    if window is None:
        base = views.base_name(table)
        return [window_rename_table(table, base),
                *view_statements(connection, table, base, relation_facts(connection, table), [(old, new)])]
    if (old, new) in window.aliases:
        return []
    aliases = [pair for pair in window.aliases if pair[0] != old] + [(old, new)]
    return [window_drop_view(table),
            *view_statements(connection, table, window.base, relation_facts(connection, window.base), aliases)]


def executor(connection, execute):
    """``execute`` (an execute-wrapper's callee) made window-aware; same signature."""

    def run(sql, params, many, context):
        return execute_statement(connection, lambda s, p: execute(s, p, many, context), sql, params)

    return run


# -- what --plan --annotate says ------------------------------------------------------------


class PlanTracker:
    """Follows rename windows through the statements of a plan, for ``migrate --plan --annotate``.

    Starts from the windows open in the database and sees windows open and
    close in the collected SQL (the marker comment, the base table's
    rename back), so a later statement on the table is shown as what it
    becomes: run on the base table, with the view re-created where needed.
    """

    _OPENS = re.compile(rf"^\s*COMMENT\s+ON\s+VIEW\s+({_IDENT})\s+IS\s+'{re.escape(views.MARKER_PREFIX)}", re.I)
    _CLOSES = re.compile(rf"^\s*ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?({_IDENT})\s+RENAME\s+TO\s+({_IDENT})\s*;?\s*$",
                         re.I)
    _DROPS = re.compile(rf"^\s*DROP\s+VIEW\s+(?:IF\s+EXISTS\s+)?({_IDENT})\s*;?\s*$", re.I)

    def __init__(self, connection):
        try:
            self.open = set(catalog.rename_windows(connection)) if connection is not None else set()
        except Exception:  # no database to ask (the plan is still worth showing)
            self.open = set()

    def note(self, statement):
        """A few words on how ``statement`` meets a rename window, or None."""
        match = self._OPENS.match(statement)
        if match:
            table = _unquote(match.group(1))
            self.open.add(table)
            return f"rename window on {table}: the view shows the old and the new column names until contract"
        match = self._CLOSES.match(statement)
        if match and _unquote(match.group(1)) == views.base_name(_unquote(match.group(2))):
            table = _unquote(match.group(2))
            self.open.discard(table)
            return f"closes the rename window on {table}: the table takes its name back"
        match = self._DROPS.match(statement)
        if match and _unquote(match.group(1)) in self.open:
            return "the rename window's view goes (re-created or closed in the same transaction)"
        if not self.open or not _is_ddl(statement):
            return None
        windows = {table: Window(table, views.base_name(table), []) for table in self.open}
        try:
            steps = plan(statement, windows)
        except UnsafeOperationError:
            return "REFUSED while a rename window is open on this table: run migrate_contract first"
        if steps is None:
            return None
        tables = ", ".join(sorted(t for t in self.open if t.lower() in statement.lower()))
        return (f"rename window open on {tables}: runs on the base table"
                + ("; the view is re-created in the same transaction" if steps.rebuild else ""))
