"""What the migration role may do, asked of the catalog before it matters.

On a managed server (RDS, Cloud SQL, Azure, Supabase, Neon) nobody is superuser: a
migration role owns the tables and an application role has DML grants only
(docs/pages/roles.md). Two kinds of gap follow, handled here:

* **Grants a migration cannot do without** -- ownership of the tables it alters,
  ``CREATE`` in the schema new objects go to, ownership of django-pgtrigger's helper
  function (it is re-created with ``CREATE OR REPLACE`` on every trigger install).
  A missing one makes a statement fail half-way through a non-atomic migration.
  ``problems_for`` finds them from the catalog alone (``pg_has_role``,
  ``has_schema_privilege``, ``has_table_privilege``), so ``migrate`` can refuse
  before its first statement, naming the grant and the object
  (``safemigrate.planning.preflight``).
* **Privileges that only make things better** -- ``pg_read_all_stats`` (other roles'
  query text and state in ``pg_stat_activity``, replica positions in
  ``pg_stat_replication``) and ``pg_signal_backend`` (cancelling another role's
  statements). Without them the run goes on; ``notice_once`` says once per run what
  was hidden and which grant shows it.

Nothing here changes the database.
"""

import weakref
from dataclasses import dataclass

from .reporting import current_report

#: What ``pg_stat_activity.query`` shows for sessions this role may not see.
HIDDEN_QUERY = "<insufficient privilege>"
IGNORE_FUNCTION = "_pgtrigger_should_ignore"

_seen = weakref.WeakKeyDictionary()  # Report -> keys already announced


@dataclass(frozen=True)
class Problem:
    """One missing grant: ``grant`` on ``target`` (both as an administrator would write them)."""

    grant: str
    target: str
    why: str
    fix: str

    @property
    def missing(self):
        return f"{self.grant} {'of' if self.grant == 'ownership' else 'on'} {self.target}"

    def line(self):
        return f"missing {self.missing}: {self.why}. Fix: {self.fix}"


def _one(connection, sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def current_role(connection):
    return _one(connection, "SELECT current_user")[0]


def is_superuser(connection):
    return bool(_one(connection, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0])


def can_read_all_stats(connection):
    """True when ``pg_stat_activity`` / ``pg_stat_replication`` show every session in full."""
    return bool(_one(connection, "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
                                 "FROM pg_roles WHERE rolname = current_user")[0])


# -- notices: "this was hidden from you, and this grant shows it" ----------------------


def notice_once(key, message):
    """Warn ``message`` once per run (per ``Report``), however often the cause recurs."""
    report = current_report()
    keys = _seen.setdefault(report, set())
    if key in keys:
        return False
    keys.add(key)
    report.warning(message)
    return True


def hidden(session):
    """True for a ``pg_stat_activity`` row this role may not see in full."""
    return session.get("query") == HIDDEN_QUERY or (session.get("state") is None and "state" in session)


def note_hidden_sessions(connection, sessions, what="the sessions holding locks"):
    """Say once that other roles' sessions are shown without query text, and which grant shows it."""
    if not any(hidden(session) for session in sessions):
        return
    role = current_role(connection)
    notice_once(
        "pg_read_all_stats:activity",
        f"The migration role {role} cannot see what other roles' sessions are doing: pg_stat_activity "
        f"hides their query text and state without pg_read_all_stats, so {what} are named by pid and "
        f"lock only. To see them: GRANT pg_read_all_stats TO {role};",
    )


def describe_hidden(session):
    """How a session this role may not see is described (instead of ``'<insufficient privilege>'``)."""
    return (f"pid {session['pid']} ({session.get('mode') or 'a session'}; its state and query are hidden "
            f"from this role, see the pg_read_all_stats notice)")


def note_hidden_replicas(connection):
    role = current_role(connection)
    notice_once(
        "pg_read_all_stats:replication",
        f"The migration role {role} cannot see replica positions in pg_stat_replication (it needs "
        f"pg_read_all_stats): replicas it cannot see do not throttle backfills. To see them: "
        f"GRANT pg_read_all_stats TO {role};",
    )


def note_hidden_orphans(connection, count):
    role = current_role(connection)
    notice_once(
        "pg_read_all_stats:orphans",
        f"{count} connection(s) of an earlier safemigrate run under another role are open, and the migration "
        f"role {role} cannot see whether they are still executing a statement (pg_stat_activity hides their "
        f"state without pg_read_all_stats), so this run cannot wait for them or cancel them. If that run "
        f"was killed, check them as an administrator; to let runs see them: GRANT pg_read_all_stats TO {role};",
    )


def cancel_refused_hint(connection, pids):
    """Why ``pg_cancel_backend`` returned false (or raised), and which grant allows it."""
    role = current_role(connection)
    return (f"not allowed to cancel pids {pids}: they belong to another role, and cancelling another role's "
            f"statements needs membership of that role or GRANT pg_signal_backend TO {role}")


# -- grants a migration needs, checked before it starts ----------------------------------


def current_schema_problem(connection):
    """``CREATE`` on the schema unqualified new objects go to (the first existing one on the path)."""
    schema, can_create = _one(connection, "SELECT current_schema(), "
                                          "has_schema_privilege(current_schema(), 'CREATE')")
    if schema is None:
        path = _one(connection, "SELECT current_setting('search_path')")[0]
        return Problem(
            "a schema to create objects in", f"search_path ({path})",
            "no schema on the migration role's search_path exists, so a new table, view or function has "
            "nowhere to go",
            "create the schema, or set search_path to one that exists (docs/pages/roles.md)",
        )
    if can_create:
        return None
    role = current_role(connection)
    return Problem(
        "CREATE", f"schema {schema}",
        f"new tables, compatibility views, trigger functions and the backfill progress table are created "
        f"in {schema}, the first schema on its search_path",
        f"GRANT CREATE ON SCHEMA {schema} TO {role}; (or put a schema it owns first on its search_path)",
    )


def table_problems(connection, tables, reasons):
    """Tables (existing ones only) the role may not ALTER: it neither owns them nor is a member of the owner.

    ``reasons`` maps a table name to a phrase saying which migration needs it.
    """
    if not tables:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT t.name, n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner)
              FROM unnest(%s::text[]) AS t(name)
              JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
             ORDER BY 1
            """,
            [sorted(tables)],
        )
        rows = cursor.fetchall()
    role = current_role(connection)
    return [
        Problem(
            "ownership", f"table {qualified}",
            f"it is owned by {owner}, and {role} is not a member of {owner}; {reasons.get(name, 'a migration')} "
            f"changes it, and only the owner of a table may alter it, index it or put a trigger on it",
            f"ALTER TABLE {qualified} OWNER TO {role}; (or GRANT {owner} TO {role};)",
        )
        for name, qualified, owner in rows
    ]


def reference_problems(connection, targets, reasons):
    """Tables a new foreign key points at without REFERENCES on them (owners have it)."""
    if not targets:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT t.name, n.nspname || '.' || c.relname
              FROM unnest(%s::text[]) AS t(name)
              JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.name))
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT has_table_privilege(c.oid, 'REFERENCES')
             ORDER BY 1
            """,
            [sorted(targets)],
        )
        rows = cursor.fetchall()
    role = current_role(connection)
    return [
        Problem("REFERENCES", f"table {qualified}",
                f"{reasons.get(name, 'a migration')} adds a foreign key pointing at it",
                f"GRANT REFERENCES ON {qualified} TO {role};")
        for name, qualified in rows
    ]


def trigger_function_problem(connection, schema):
    """django-pgtrigger's helper function: re-created (``CREATE OR REPLACE``) on every trigger install.

    That needs ``CREATE`` on ``PGTRIGGER_SCHEMA`` and, once the function exists,
    ownership of it. Since PostgreSQL 15 only the owner of ``public`` (pgtrigger's
    default schema) may create there.
    """
    row = _one(
        connection,
        """
        SELECT n.nspname IS NOT NULL, has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE'),
               p.oid IS NOT NULL, pg_get_userbyid(p.proowner), coalesce(pg_has_role(current_user, p.proowner, 'USAGE'), true)
          FROM (SELECT %s::name AS wanted) w
          LEFT JOIN pg_namespace n ON n.nspname = w.wanted
          LEFT JOIN pg_proc p ON p.pronamespace = n.oid AND p.proname = %s
        """,
        [schema, IGNORE_FUNCTION],
    )
    exists, can_create, function_exists, owner, owns = row
    role = current_role(connection)
    setting = (f"PGTRIGGER_SCHEMA is {schema!r}: django-pgtrigger re-creates its helper function "
               f"{schema}.{IGNORE_FUNCTION}() there whenever a trigger is installed (the dual-write triggers "
               f"call it)")
    if not exists:
        return Problem("a schema", f"schema {schema}", f"{setting}, and that schema does not exist",
                       "set PGTRIGGER_SCHEMA to the application's schema (docs/pages/roles.md)")
    if not can_create:
        return Problem("CREATE", f"schema {schema}", setting,
                       f"set PGTRIGGER_SCHEMA to a schema the migration role owns, e.g. the application's "
                       f"(docs/pages/roles.md), or GRANT CREATE ON SCHEMA {schema} TO {role};")
    if function_exists and not owns:
        return Problem("ownership", f"function {schema}.{IGNORE_FUNCTION}(name)",
                       f"{setting}; it exists, owned by {owner}, and only its owner may replace it",
                       f"ALTER FUNCTION {schema}.{IGNORE_FUNCTION}(name) OWNER TO {role};")
    return None


def progress_table_problem(connection, table):
    """The backfill progress table, when it exists already: the role must read and write it."""
    row = _one(
        connection,
        """
        SELECT n.nspname || '.' || c.relname,
               has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
               AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass(quote_ident(%s))
        """,
        [table],
    )
    if row is None or row[1]:
        return None
    role = current_role(connection)
    return Problem("SELECT, INSERT, UPDATE, DELETE", f"table {row[0]}",
                   "backfills record their progress there, batch by batch, so a killed run resumes",
                   f"GRANT SELECT, INSERT, UPDATE, DELETE ON {row[0]} TO {role};")


def archive_schema_problem(connection, schema):
    """The archive schema (``ARCHIVE_SCHEMA``): a contract that would drop data moves it there instead.

    A dropped column's copy, a dropped table and the manifest all go into that
    schema, so the migration role needs ``CREATE`` on it (``SET SCHEMA`` needs
    it too) or, when it does not exist yet, ``CREATE`` on the database to make
    it. On a managed database the role seldom has the latter: the schema is
    made once by an administrator, owned by the migration role
    (docs/pages/roles.md).
    """
    exists, can_use, database, can_create_schema = _one(
        connection,
        """
        SELECT n.oid IS NOT NULL,
               coalesce(has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE'), false),
               current_database(), has_database_privilege(current_database(), 'CREATE')
          FROM (SELECT %s::name AS wanted) w LEFT JOIN pg_namespace n ON n.nspname = w.wanted
        """,
        [schema],
    )
    role = current_role(connection)
    why = (f"a contract that would drop a column or a table archives it into schema {schema} (ARCHIVE_SCHEMA), "
           f"with the manifest recording it")
    if not exists:
        if can_create_schema:
            return None
        return Problem("a schema", f"schema {schema}",
                       f"{why}; that schema does not exist and {role} may not create schemas in database "
                       f"{database}",
                       f"CREATE SCHEMA {schema} AUTHORIZATION {role}; (or GRANT CREATE ON DATABASE {database} "
                       f"TO {role};, or ARCHIVE off for the app)")
    if can_use:
        return None
    return Problem("CREATE", f"schema {schema}", why,
                   f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}; (or ALTER SCHEMA {schema} OWNER TO {role};)")
