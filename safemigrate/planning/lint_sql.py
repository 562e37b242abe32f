"""Risky statements inside ``RunSQL``, as linter findings.

``RunSQL`` is where hand-written DDL hides from a linter that only knows
Django's operations. The statements are split and read by the one SQL-text
classifier (``pg.classify``), the same one the execution path uses at run
time; this module only turns the raw-SQL rules it reports into ``Finding``
records. The classifier is careful: a rule is reported only when the shape
is certain (``CREATE INDEX`` without ``CONCURRENTLY``, ``ALTER TABLE ... SET
NOT NULL``, ...); functions, triggers, INSERTs, UPDATEs with a WHERE clause
are left alone, so a team can gate CI on the linter.
"""

from ..pg.classify import classify, split_statements
from ..pg.classify import tables_created as created_in
from .findings import Finding


def _statement_sql(operation):
    sql = operation.sql
    if isinstance(sql, str):
        return [sql]
    out = []
    for item in sql or ():
        out.append(item[0] if isinstance(item, (list, tuple)) else item)
    return [s for s in out if isinstance(s, str)]


def classify_statement(statement):
    """Findings for one statement (already stripped of comments and collapsed to one line)."""
    excerpt = statement if len(statement) <= 120 else statement[:117] + "..."
    return [Finding(risk.code, f"RunSQL: {excerpt}", risk.problem, risk.fix, risk.lock, risk.table, risk.index)
            for risk in classify(statement).risks]


def sql_findings(operation):
    """Findings for each risky statement in a ``RunSQL`` operation's forward SQL."""
    found = []
    for text in _statement_sql(operation):
        for statement in split_statements(text):
            found.extend(classify_statement(statement))
    return found


def tables_created(operation):
    """Tables a ``RunSQL`` operation creates (``CREATE TABLE``): new, so nothing on them is risky yet."""
    return [table for text in _statement_sql(operation) for table in created_in(text)]
