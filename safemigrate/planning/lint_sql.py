"""Risky statements inside ``RunSQL``: a small, careful classifier of PostgreSQL DDL.

``RunSQL`` is where hand-written DDL hides from a linter that only knows
Django's operations. This module splits the SQL text into statements (outside
quotes, dollar-quoted bodies and comments), and recognises the handful of
statement shapes that take a long or blocking lock or break running code.

Careful means: a statement is reported only when its shape is certain
(``CREATE INDEX`` without ``CONCURRENTLY``, ``ALTER TABLE ... SET NOT NULL``
...). Anything it does not recognise (functions, triggers, INSERTs, UPDATEs
with a WHERE clause) is left alone: the linter must stay quiet enough that a
team can gate CI on it.
"""

import re
from dataclasses import replace

from .findings import Finding

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_NAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})*"
_VOLATILE_DEFAULT = re.compile(
    r"\bDEFAULT\b[^,]*\b(random|gen_random_uuid|uuid_generate_v[14]|clock_timestamp|nextval|timeofday)\s*\(",
    re.I)


def split_statements(sql):
    """Statements of ``sql`` without comments, split on ``;`` outside quotes and $$ bodies."""
    statements, current, i, n = [], [], 0, len(sql)
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            current.append(" ")
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            current.append(sql[i:end + 1])
            i = end + 1
            continue
        if ch == "$":
            tag = re.match(r"\$(?:[A-Za-z_]\w*)?\$", sql[i:])
            if tag:
                end = sql.find(tag.group(0), i + len(tag.group(0)))
                end = n if end < 0 else end + len(tag.group(0))
                current.append(sql[i:end])
                i = end
                continue
        if ch == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current))
    return [" ".join(s.split()) for s in statements if s.strip()]


def _split_top_level(text, sep=","):
    """Split on ``sep`` outside parentheses and quotes (ALTER TABLE's list of actions)."""
    parts, depth, current, quote = [], 0, [], None
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in ("'", '"'):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def table_name(name):
    """The unqualified table name, unquoted (case-folded when it was not quoted)."""
    last = re.findall(_IDENT, name)[-1]
    if last.startswith('"'):
        return last[1:-1].replace('""', '"')
    return last.lower()


def _statement_sql(operation):
    sql = operation.sql
    if isinstance(sql, str):
        return [sql]
    out = []
    for item in sql or ():
        out.append(item[0] if isinstance(item, (list, tuple)) else item)
    return [s for s in out if isinstance(s, str)]


def sql_findings(operation):
    """Findings for each risky statement in a ``RunSQL`` operation's forward SQL."""
    found = []
    for text in _statement_sql(operation):
        for statement in split_statements(text):
            found.extend(classify_statement(statement))
    return found


def _finding(code, statement, problem, fix, lock, table):
    excerpt = statement if len(statement) <= 120 else statement[:117] + "..."
    return Finding(code, f"RunSQL: {excerpt}", problem, fix, lock, table)


def classify_statement(statement):
    """Findings for one statement (already stripped of comments and collapsed to one line)."""
    upper = statement.upper()
    match = re.match(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?({_NAME})\s*\*?\s+(.*)$", statement, re.I | re.S)
    if match:
        table = table_name(match.group(1))
        found = []
        for action in _split_top_level(match.group(2)):
            found.extend(_alter_table_action(statement, table, action))
        return found
    match = re.match(rf"CREATE\s+(UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?:{_NAME}\s+)?"
                     rf"ON\s+(?:ONLY\s+)?({_NAME})", statement, re.I)
    if match:
        if match.group(2):
            return []
        return [_finding("SAFE131", statement, "CREATE INDEX without CONCURRENTLY blocks every write to the "
                         "table for the whole build.",
                         "CREATE INDEX CONCURRENTLY in a non-atomic migration (or CreateIndexConcurrently).",
                         "SHARE for the whole index build (blocks writes)", table_name(match.group(3)))]
    match = re.match(rf"REINDEX\s+(?:\([^)]*\)\s*)?(TABLE|INDEX)\s+(CONCURRENTLY\s+)?({_NAME})", statement, re.I)
    if match and not match.group(2):
        table = table_name(match.group(3)) if match.group(1).upper() == "TABLE" else None
        return [_finding("SAFE131", statement, "REINDEX without CONCURRENTLY blocks writes (and reads through "
                         "the index) for the whole rebuild.", "REINDEX ... CONCURRENTLY outside a transaction.",
                         "SHARE on the table, ACCESS EXCLUSIVE on the index, for the whole rebuild", table)]
    match = re.match(rf"DROP\s+INDEX\s+(CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?({_NAME})", statement, re.I)
    if match:
        if match.group(1):
            return []
        # The table is not in the statement; ``lint`` looks the index name up in the migration state.
        return [replace(_finding("SAFE139", statement, "DROP INDEX is quick but takes ACCESS EXCLUSIVE on the "
                                 "table: if it waits behind a long query, all traffic on the table queues "
                                 "behind it.", "DROP INDEX CONCURRENTLY in a non-atomic migration (or "
                                 "DropIndexConcurrently).", "ACCESS EXCLUSIVE, brief (no rewrite, no scan)", None),
                        index=table_name(match.group(2)))]
    match = re.match(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(.+?)(?:\s+(?:CASCADE|RESTRICT))?$", statement, re.I)
    if match:
        return [_finding("SAFE135", statement, "drops the table while the running code may still query it.",
                         "stop using the model first (RemoveModelSafely), then DropTable in the contract stage.",
                         "ACCESS EXCLUSIVE (instant; queues traffic if it waits)", table_name(name))
                for name in _split_top_level(match.group(1))]
    match = re.match(rf"TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?({_NAME})", statement, re.I)
    if match:
        return [_finding("SAFE135", statement, "empties the table under ACCESS EXCLUSIVE while the running code "
                         "still reads it.", "delete in batches (Backfill-style keyset batches), or run it in a "
                         "maintenance window.", "ACCESS EXCLUSIVE (instant; queues traffic if it waits)",
                         table_name(match.group(1)))]
    match = re.match(rf"LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?({_NAME})", statement, re.I)
    if match:
        return [_finding("SAFE137", statement, "holds an explicit table lock until the migration's transaction "
                         "ends; in ACCESS EXCLUSIVE mode (the default) every query on the table waits that long.",
                         "drop the LOCK TABLE; safemigrate's operations take each lock briefly with a "
                         "lock_timeout and retry.", "the requested mode (default ACCESS EXCLUSIVE) until commit",
                         table_name(match.group(1)))]
    match = re.match(rf"(UPDATE)\s+(?:ONLY\s+)?({_NAME})|(DELETE)\s+FROM\s+(?:ONLY\s+)?({_NAME})", statement, re.I)
    if match and not re.search(r"\bWHERE\b", _without_literals(upper)):
        table = table_name(match.group(2) or match.group(4))
        return [_finding("SAFE138", statement, "changes every row in one statement and one transaction: each row "
                         "stays locked until the migration commits, and application writes to them wait.",
                         "Backfill / RunPythonBatched (short keyset batches, resumable).",
                         "ROW EXCLUSIVE + row locks on every row until commit", table)]
    match = re.match(r"(VACUUM\s+(?:\([^)]*FULL[^)]*\)|FULL)|CLUSTER)\s+(?:VERBOSE\s+)?(" + _NAME + ")?",
                     statement, re.I)
    if match:
        return [_finding("SAFE133", statement, "rewrites the whole table under ACCESS EXCLUSIVE.",
                         "pg_repack or pg_squeeze outside the migration, or a maintenance window.",
                         "ACCESS EXCLUSIVE for a full table rewrite (blocks reads and writes)",
                         table_name(match.group(2)) if match.group(2) else None)]
    return []


def _without_literals(text):
    return re.sub(r"'(?:[^']|'')*'", "''", text)


def _alter_table_action(statement, table, action):
    upper = action.upper()
    rewrite = "ACCESS EXCLUSIVE for a full table rewrite (blocks reads and writes)"
    add_column = re.match(r"ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?!CONSTRAINT\b|PRIMARY\b|UNIQUE\b|"
                          r"FOREIGN\b|CHECK\b|EXCLUDE\b)", action, re.I)
    if add_column:
        found = []
        if re.search(r"\bNOT\s+NULL\b", upper) and not re.search(r"\bDEFAULT\b", upper) and \
                not re.search(r"\bGENERATED\b", upper):
            found.append(_finding("SAFE130", statement, "adds a NOT NULL column without a default: it fails on a "
                                  "table with rows, and the running code's INSERTs (which omit the column) fail.",
                                  "add the column nullable or with a constant DEFAULT (AddColumnNullable), backfill, "
                                  "then SetNotNull in the contract stage.",
                                  "ACCESS EXCLUSIVE (instant catalog change; queues traffic if it waits)", table))
        if _VOLATILE_DEFAULT.search(action) or re.search(r"\bGENERATED\s+ALWAYS\s+AS\s*\(.*\)\s*STORED", upper):
            found.append(_finding("SAFE133", statement, "adds a column whose value is computed per row (a "
                                  "volatile default or a stored generated column): PostgreSQL rewrites the whole "
                                  "table under ACCESS EXCLUSIVE.",
                                  "add the column nullable, set the default, and backfill in batches.", rewrite, table))
        if re.search(r"\b(PRIMARY\s+KEY|UNIQUE)\b", upper):
            found.append(_index_build(statement, table))
        return found
    if re.match(r"ADD\s+(?:CONSTRAINT\s+" + _IDENT + r"\s+)?(PRIMARY\s+KEY|UNIQUE|EXCLUDE)\b", action, re.I):
        if re.search(r"\bUSING\s+INDEX\s+(?!TABLESPACE)", upper):
            return []  # attaches an index built beforehand (CONCURRENTLY): instant
        return [_index_build(statement, table)]
    if re.match(r"ADD\s+(?:CONSTRAINT\s+" + _IDENT + r"\s+)?(FOREIGN\s+KEY|CHECK)\b", action, re.I):
        if re.search(r"\bNOT\s+VALID\b", upper):
            return []
        return [_finding("SAFE132", statement, "adds a constraint without NOT VALID: PostgreSQL checks every row "
                         "while holding a lock that blocks writes (ACCESS EXCLUSIVE for CHECK, SHARE ROW EXCLUSIVE "
                         "on both tables for a foreign key).",
                         "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a separate statement "
                         "(AddCheckConstraint / AddForeignKey).",
                         "ACCESS EXCLUSIVE or SHARE ROW EXCLUSIVE for a full validation scan", table)]
    column = re.match(r"ALTER\s+(?:COLUMN\s+)?(" + _IDENT + r")\s+(.*)$", action, re.I | re.S)
    if column:
        rest = column.group(2).upper()
        if re.match(r"(SET\s+DATA\s+)?TYPE\b", rest):
            return [_finding("SAFE133", statement, "changes a column type: unless PostgreSQL can do it in place "
                             "(varchar widening, varchar -> text) it rewrites the table and its indexes under "
                             "ACCESS EXCLUSIVE.", "ChangeTypeViaCopy (shadow column kept in step by triggers), "
                             "FinishChangeTypeViaCopy (contract).", rewrite, table)]
        if re.match(r"SET\s+NOT\s+NULL\b", rest):
            return [_finding("SAFE134", statement, "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE "
                             "(unless a validated CHECK (col IS NOT NULL) exists).",
                             "SetNotNull (CHECK NOT VALID, VALIDATE, then SET NOT NULL without a scan).",
                             "ACCESS EXCLUSIVE for a full-table scan (blocks reads and writes)", table)]
        return []
    if re.match(r"DROP\s+(?!CONSTRAINT\b)", action, re.I):
        return [_finding("SAFE135", statement, "drops a column the running code may still select or insert.",
                         "RemoveFieldSafely (expand: nullable, out of the model), DropColumn (contract).",
                         "ACCESS EXCLUSIVE (instant; queues traffic if it waits)", table)]
    if re.match(r"RENAME\s+(?!CONSTRAINT\b)", action, re.I):
        return [_finding("SAFE136", statement, "renames a column or the table under the running code, which keeps "
                         "using the old name.", "RenameViaCopy / RenameModelWithView (expand), their Finish "
                         "operations (contract).", "ACCESS EXCLUSIVE (instant; queues traffic if it waits)", table)]
    if re.match(r"SET\s+(LOGGED|UNLOGGED|TABLESPACE)\b", action, re.I):
        return [_finding("SAFE133", statement, "rewrites the whole table under ACCESS EXCLUSIVE.",
                         "a maintenance window.", rewrite, table)]
    return []


def _index_build(statement, table):
    return _finding("SAFE131", statement, "builds a unique or primary key index while blocking writes for the "
                    "whole build.", "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX "
                    "(AddUniqueConstraint).", "SHARE for the whole index build (blocks writes)", table)


def tables_created(operation):
    """Tables a ``RunSQL`` operation creates (``CREATE TABLE``): new, so nothing on them is risky yet."""
    created = []
    for text in _statement_sql(operation):
        for statement in split_statements(text):
            match = re.match(rf"CREATE\s+(?:(?:GLOBAL\s+|LOCAL\s+)?(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+"
                             rf"(?:IF\s+NOT\s+EXISTS\s+)?({_NAME})", statement, re.I)
            if match:
                created.append(table_name(match.group(1)))
    return created
