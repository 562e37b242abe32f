"""Which lock one SQL statement takes, read from its text.

The execution path (``safemigrate.pg.execution``) sees every statement a
migration sends, whatever operation or app produced it, but only as SQL.
This module answers, for that text: does it request a table lock that can
queue traffic (so it needs ``lock_timeout`` and a retry), does it then hold
that lock for real work (an index build, a validation scan, a rewrite) rather
than an instant catalog change, and can it run inside a transaction at all.

The rules follow PostgreSQL's documentation of lock levels per command. The
text of a statement cannot tell everything (``SET NOT NULL`` skips its scan
when a valid CHECK already proves it; raw SQL may call a function that does
anything), so where it is unsure it says so and assumes the worse case.
"""

import re
from dataclasses import dataclass

IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
QUALIFIED = rf"{IDENT}(?:\.{IDENT})?"

BOUNDED = "bounded"
REWRITTEN = "rewritten"
UNBOUNDED = "unbounded"

_READ_ONLY = ("SELECT", "SHOW", "SET", "RESET", "BEGIN", "START", "COMMIT", "ROLLBACK", "END", "SAVEPOINT",
              "RELEASE", "EXPLAIN", "VALUES", "DECLARE", "FETCH", "CLOSE", "PREPARE", "DEALLOCATE",
              "LISTEN", "UNLISTEN", "NOTIFY", "DISCARD", "TABLE")
_ROW_LOCKS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "WITH")


@dataclass(frozen=True)
class StatementLock:
    #: The strongest table lock, in PostgreSQL's words, and on what.
    lock: str
    #: The (unquoted) table the lock is on, when the text names one.
    table: "str | None" = None
    #: True when the request can queue reads or writes behind it: it needs a lock_timeout.
    takes_lock: bool = True
    #: Why traffic waits beyond an instant once the lock is granted (None: instant).
    blocking_work: "str | None" = None
    #: False for statements PostgreSQL refuses inside a transaction block.
    in_transaction: bool = True


def unquote(identifier):
    """``"a""b"`` -> ``a"b``; a bare identifier is folded to lower case, as PostgreSQL does."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def table_name(qualified):
    """The table part of a possibly schema-qualified name, unquoted."""
    parts = re.findall(IDENT, qualified)
    return unquote(parts[-1]) if parts else None


def normalize(sql):
    """Strip leading comments and collapse whitespace (for matching only)."""
    text = re.sub(r"^\s*(--[^\n]*\n\s*|/\*.*?\*/\s*)*", "", sql, flags=re.S)
    return re.sub(r"\s+", " ", text).strip().rstrip(";").strip()


def _first_table(pattern, text):
    match = re.search(pattern, text, re.I)
    return table_name(match.group(1)) if match else None


def statement_lock(sql):
    """The ``StatementLock`` of one statement (see the module docstring)."""
    text = normalize(sql)
    upper = text.upper()
    head = upper.split(" ", 1)[0] if upper else ""
    if not text or head in _READ_ONLY:
        return StatementLock("ACCESS SHARE at most (reads)", takes_lock=False)
    if head in _ROW_LOCKS:
        return StatementLock("ROW EXCLUSIVE (row locks on the rows it writes)", takes_lock=False)
    if head in ("VACUUM", "ANALYZE"):
        return StatementLock("SHARE UPDATE EXCLUSIVE (reads and writes continue)", takes_lock=False,
                             in_transaction=head != "VACUUM")
    if " CONCURRENTLY" in upper:
        return StatementLock("SHARE UPDATE EXCLUSIVE (reads and writes continue)",
                             table=_first_table(rf"\bON (?:ONLY )?({QUALIFIED})", text),
                             takes_lock=False, in_transaction=False)
    alter = re.match(rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({QUALIFIED}) (.*)$", text, re.I | re.S)
    if alter:
        return _alter_table(table_name(alter.group(1)), alter.group(2).upper())
    if re.match(r"CREATE (UNIQUE )?INDEX", upper):
        return StatementLock("SHARE (blocks writes until the index is built)",
                             table=_first_table(rf"\bON (?:ONLY )?({QUALIFIED})", text),
                             blocking_work="builds the index while every write to the table waits")
    if upper.startswith("CREATE TABLE"):
        refs = " REFERENCES " in upper
        return StatementLock(
            "ACCESS EXCLUSIVE on the new table only"
            + ("; SHARE ROW EXCLUSIVE on each referenced table (instant)" if refs else ""),
            table=_first_table(rf"CREATE TABLE (?:IF NOT EXISTS )?({QUALIFIED})", text),
        )
    if re.match(r"DROP (TABLE|INDEX|VIEW|MATERIALIZED VIEW|SEQUENCE)", upper) or head == "TRUNCATE":
        return StatementLock("ACCESS EXCLUSIVE (instant; blocks reads and writes while it waits)",
                             table=_first_table(rf"^(?:DROP \w+(?: VIEW)?|TRUNCATE(?: TABLE)?) (?:IF EXISTS )?"
                                                rf"({QUALIFIED})", text))
    if re.match(r"(CREATE (OR REPLACE )?|DROP )(CONSTRAINT )?TRIGGER", upper):
        return StatementLock("SHARE ROW EXCLUSIVE (instant; blocks writes while it waits)",
                             table=_first_table(rf"\bON ({QUALIFIED})", text))
    if head == "LOCK":
        mode = re.search(r"IN ([A-Z ]+?) MODE", upper)
        return StatementLock((mode.group(1) if mode else "ACCESS EXCLUSIVE") + " (held until commit)",
                             table=_first_table(rf"^LOCK (?:TABLE )?(?:ONLY )?({QUALIFIED})", text))
    if head in ("CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "REINDEX", "CLUSTER", "REFRESH"):
        work = {"REINDEX": "rebuilds indexes under a lock that blocks writes",
                "CLUSTER": "rewrites the table under ACCESS EXCLUSIVE",
                "REFRESH": "recomputes the view under ACCESS EXCLUSIVE"}.get(head)
        return StatementLock("catalog lock on the object it changes (instant)", blocking_work=work)
    return StatementLock("unknown (raw SQL)", blocking_work="unknown: raw SQL may do anything under its locks")


def _alter_table(table, rest):
    """Lock of ``ALTER TABLE <table> <rest>`` (``rest`` upper-cased)."""
    if rest.startswith("VALIDATE CONSTRAINT"):
        return StatementLock("SHARE UPDATE EXCLUSIVE (reads and writes continue)", table=table, takes_lock=False)
    not_valid = rest.endswith("NOT VALID")
    if "FOREIGN KEY" in rest or " REFERENCES " in f" {rest}":
        lock = "SHARE ROW EXCLUSIVE on this and the referenced table" + (
            " (instant)" if not_valid else "")
        if "ADD COLUMN" in rest and "ADD CONSTRAINT" not in rest:
            lock = "ACCESS EXCLUSIVE; " + lock
        work = None if not_valid else "checks every row against the referenced table while holding it"
        return StatementLock(lock, table=table, blocking_work=work)
    if " CHECK " in f" {rest} " or " CHECK(" in rest:
        work = None if not_valid else "validates every row while reads and writes wait"
        return StatementLock("ACCESS EXCLUSIVE" + (" (instant)" if not_valid else ""), table=table,
                             blocking_work=work)
    if re.search(r"\b(UNIQUE|PRIMARY KEY|EXCLUDE)\b", rest) and "USING INDEX" not in rest:
        return StatementLock("ACCESS EXCLUSIVE", table=table,
                             blocking_work="builds a unique index while reads and writes wait")
    if re.search(r"\bALTER (COLUMN )?\S+ (SET DATA )?TYPE\b", rest):
        return StatementLock("ACCESS EXCLUSIVE", table=table,
                             blocking_work="may rewrite the table and its indexes while reads and writes wait")
    if "SET NOT NULL" in rest:
        return StatementLock("ACCESS EXCLUSIVE", table=table,
                             blocking_work="scans the table for NULLs while reads and writes wait "
                                           "(unless a validated CHECK (col IS NOT NULL) exists)")
    if re.search(r"\bSET (UNLOGGED|LOGGED|TABLESPACE|ACCESS METHOD)\b", rest):
        return StatementLock("ACCESS EXCLUSIVE", table=table,
                             blocking_work="rewrites the table while reads and writes wait")
    return StatementLock("ACCESS EXCLUSIVE (instant catalog change; queues traffic while it waits)", table=table)
