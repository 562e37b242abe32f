"""The one SQL-text classifier, for SQL nobody declared.

safemigrate's own statements declare their lock (``pg.statements``). The rest
— Django's operations, ``RunSQL``, third-party apps, migrations written
before safemigrate was installed — reach the execution path, ``--plan
--annotate`` and the linter only as text. This module reads that text once
and answers every question those three ask of it:

- which table lock it takes (``pg.locks.Lock``), on which table, and whether
  the request can queue traffic (then it needs ``lock_timeout`` and a retry);
- whether, once granted, the lock is held for real work (an index build, a
  validation scan, a rewrite) rather than an instant catalog change;
- whether PostgreSQL allows it inside a transaction at all;
- which of the linter's raw-SQL rules (``SAFE130``–``SAFE139``) it breaks,
  with the problem and the safe alternative.

The rules follow PostgreSQL's documentation of lock levels per command. The
text of a statement cannot tell everything (``SET NOT NULL`` skips its scan
when a valid CHECK already proves it; raw SQL may call a function that does
anything), so where it is unsure the lock answer assumes the worse case and
says so. The risk answer is careful the other way: a rule is reported only
when the statement's shape is certain, so a team can gate CI on the linter.
"""

import re
from dataclasses import dataclass, field

from .locks import Lock, describe

IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
QUALIFIED = rf"{IDENT}(?:\s*\.\s*{IDENT})*"

_READ_ONLY = ("SELECT", "SHOW", "SET", "RESET", "BEGIN", "START", "COMMIT", "ROLLBACK", "END", "SAVEPOINT",
              "RELEASE", "EXPLAIN", "VALUES", "DECLARE", "FETCH", "CLOSE", "PREPARE", "DEALLOCATE",
              "LISTEN", "UNLISTEN", "NOTIFY", "DISCARD", "TABLE")
_ROW_LOCKS = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "WITH")
_VOLATILE_DEFAULT = re.compile(
    r"\bDEFAULT\b[^,]*\b(random|gen_random_uuid|uuid_generate_v[14]|clock_timestamp|nextval|timeofday)\s*\(",
    re.I)

REWRITE_TEXT = "ACCESS EXCLUSIVE for a full table rewrite (blocks reads and writes)"
INSTANT_TEXT = "ACCESS EXCLUSIVE (instant catalog change; queues traffic if it waits)"
SHARE_BUILD_TEXT = "SHARE for the whole index build (blocks writes)"


@dataclass(frozen=True)
class Risk:
    """One raw-SQL linter rule a statement breaks (``planning.findings.RULES``)."""

    code: str
    problem: str
    fix: str
    #: The lock in words, as the linter prints it.
    lock: str
    table: "str | None" = None
    #: ``DROP INDEX``: the index, so the linter can find its table in the migration state.
    index: "str | None" = None


@dataclass(frozen=True)
class Classified:
    """What one statement's text says about its locks."""

    lock: Lock
    table: "str | None" = None
    #: True when the request can queue reads or writes behind it: it needs a lock_timeout.
    takes_lock: bool = True
    #: What traffic waits for beyond an instant once the lock is granted (None: instant).
    work: "str | None" = None
    #: False for statements PostgreSQL refuses inside a transaction block.
    in_transaction: bool = True
    #: The table a ``CREATE TABLE`` creates (locks on it stall no traffic).
    creates_table: "str | None" = None
    risks: tuple = field(default=())
    #: Other tables it locks, ``((table, Lock), ...)`` (a foreign key's target).
    also_locks: tuple = ()
    #: False when the text does not say what it does (``DO`` blocks, function calls):
    #: the answer then assumes the worse case.
    known: bool = True

    def describe(self):
        """The lock in words (``pg.locks.describe``)."""
        if not self.known:
            return f"unknown (raw SQL; assumed {self.lock.pg_name} held while it runs)"
        return describe(self.lock, work=self.work, waits=self.takes_lock, new_table=bool(self.creates_table))


# -- text handling ------------------------------------------------------------


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


def _without_literals(text):
    return re.sub(r"'(?:[^']|'')*'", "''", text)


def _first_table(pattern, text):
    match = re.search(pattern, text, re.I)
    return table_name(match.group(1)) if match else None


# -- the classifier -----------------------------------------------------------


def classify(sql):
    """The ``Classified`` answer for one statement (see the module docstring).

    Text holding several statements is answered as a whole (``classify_script``):
    Django sends some as one string, e.g. removing a foreign key is
    ``SET CONSTRAINTS ... IMMEDIATE; ALTER TABLE ... DROP CONSTRAINT ...``, and
    judging that by its first word (``SET``) would run the ALTER without a lock
    timeout.
    """
    if len(split_statements(sql)) > 1:
        return classify_script(sql)
    text = normalize(sql)
    upper = text.upper()
    head = upper.split(" ", 1)[0] if upper else ""
    if not text or head in _READ_ONLY:
        return Classified(Lock.ACCESS_SHARE, takes_lock=False)
    if head in _ROW_LOCKS:
        return _row_writes(text, upper)
    if head in ("VACUUM", "ANALYZE"):
        if re.match(r"VACUUM\s+(?:\([^)]*FULL[^)]*\)|FULL)", text, re.I):
            table = _first_table(rf"^VACUUM\s+(?:\([^)]*\)|FULL)\s+(?:VERBOSE\s+)?({QUALIFIED})", text)
            return Classified(Lock.ACCESS_EXCLUSIVE, table, work="rewrites the whole table", in_transaction=False,
                              risks=(Risk("SAFE133", "rewrites the whole table under ACCESS EXCLUSIVE.",
                                          "pg_repack or pg_squeeze outside the migration, or a maintenance window.",
                                          REWRITE_TEXT, table),))
        return Classified(Lock.SHARE_UPDATE_EXCLUSIVE, takes_lock=False, in_transaction=head != "VACUUM")
    if " CONCURRENTLY" in upper and not upper.startswith("REFRESH"):
        return Classified(Lock.SHARE_UPDATE_EXCLUSIVE, _first_table(rf"\bON (?:ONLY )?({QUALIFIED})", text),
                          takes_lock=False, in_transaction=False)
    alter = re.match(rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({QUALIFIED})\s*\*?\s+(.*)$", text, re.I | re.S)
    if alter:
        return _alter_table(text, table_name(alter.group(1)), alter.group(2))
    if re.match(r"CREATE (UNIQUE )?INDEX\b", upper):
        table = _first_table(rf"\bON (?:ONLY )?({QUALIFIED})", text)
        return Classified(Lock.SHARE, table, work="builds the index",
                          risks=(Risk("SAFE131", "CREATE INDEX without CONCURRENTLY blocks every write to the "
                                      "table for the whole build.",
                                      "CREATE INDEX CONCURRENTLY in a non-atomic migration (or CreateIndexConcurrently).",
                                      SHARE_BUILD_TEXT, table),))
    if re.match(r"CREATE (?:(?:GLOBAL |LOCAL )?(?:TEMP|TEMPORARY|UNLOGGED) )?TABLE", upper):
        # Foreign keys in it take SHARE ROW EXCLUSIVE on their targets for an
        # instant: a new table has no rows to check.
        created = _first_table(rf"TABLE (?:IF NOT EXISTS )?({QUALIFIED})", text)
        return Classified(Lock.ACCESS_EXCLUSIVE, created, creates_table=created)
    match = re.match(rf"DROP INDEX (?:IF EXISTS )?({QUALIFIED})", text, re.I)
    if match:
        return Classified(Lock.ACCESS_EXCLUSIVE, None, risks=(Risk(
            "SAFE139", "DROP INDEX is quick but takes ACCESS EXCLUSIVE on the table: if it waits behind a long "
            "query, all traffic on the table queues behind it.",
            "DROP INDEX CONCURRENTLY in a non-atomic migration (or DropIndexConcurrently).",
            "ACCESS EXCLUSIVE, brief (no rewrite, no scan)", None, index=table_name(match.group(1))),))
    match = re.match(r"DROP TABLE (?:IF EXISTS )?(.+?)(?: (?:CASCADE|RESTRICT))?$", text, re.I)
    if match:
        names = [table_name(name) for name in _split_top_level(match.group(1))]
        return Classified(Lock.ACCESS_EXCLUSIVE, names[0] if names else None, risks=tuple(
            Risk("SAFE135", "drops the table while the running code may still query it.",
                 "stop using the model first (RemoveModelSafely), then DropTable in the contract stage.",
                 INSTANT_TEXT, name) for name in names))
    if re.match(r"DROP (VIEW|MATERIALIZED VIEW|SEQUENCE)", upper):
        return Classified(Lock.ACCESS_EXCLUSIVE, _first_table(rf"^DROP (?:MATERIALIZED )?\w+ (?:IF EXISTS )?({QUALIFIED})",
                                                              text))
    match = re.match(rf"TRUNCATE (?:TABLE )?(?:ONLY )?({QUALIFIED})", text, re.I)
    if match:
        table = table_name(match.group(1))
        return Classified(Lock.ACCESS_EXCLUSIVE, table, risks=(Risk(
            "SAFE135", "empties the table under ACCESS EXCLUSIVE while the running code still reads it.",
            "delete in batches (Backfill-style keyset batches), or run it in a maintenance window.",
            INSTANT_TEXT, table),))
    if re.match(r"(CREATE (OR REPLACE )?|DROP )(CONSTRAINT )?TRIGGER", upper):
        # CREATE TRIGGER takes SHARE ROW EXCLUSIVE; DROP TRIGGER takes ACCESS EXCLUSIVE
        # (even IF EXISTS, when there is none: the table is locked before the lookup).
        lock = Lock.ACCESS_EXCLUSIVE if head == "DROP" else Lock.SHARE_ROW_EXCLUSIVE
        return Classified(lock, _first_table(rf"\bON ({QUALIFIED})", text))
    if head == "LOCK":
        mode = re.search(r"IN ([A-Z ]+?) MODE", upper)
        lock = Lock.parse(mode.group(1)) if mode else Lock.ACCESS_EXCLUSIVE
        table = _first_table(rf"^LOCK (?:TABLE )?(?:ONLY )?({QUALIFIED})", text)
        return Classified(lock, table, risks=(Risk(
            "SAFE137", "holds an explicit table lock until the migration's transaction ends; in ACCESS EXCLUSIVE "
            "mode (the default) every query on the table waits that long.",
            "drop the LOCK TABLE; safemigrate's operations take each lock briefly with a lock_timeout and retry.",
            "the requested mode (default ACCESS EXCLUSIVE) until commit", table),))
    if head == "REINDEX":
        match = re.match(rf"REINDEX (?:\([^)]*\) ?)?(TABLE|INDEX) (CONCURRENTLY )?({QUALIFIED})", text, re.I)
        table = table_name(match.group(3)) if match and match.group(1).upper() == "TABLE" else None
        risk = () if match is None else (Risk(
            "SAFE131", "REINDEX without CONCURRENTLY blocks writes (and reads through the index) for the whole "
            "rebuild.", "REINDEX ... CONCURRENTLY outside a transaction.",
            "SHARE on the table, ACCESS EXCLUSIVE on the index, for the whole rebuild", table),)
        return Classified(Lock.SHARE, table, work="rebuilds indexes", risks=risk)
    if head == "CLUSTER":
        table = _first_table(rf"^CLUSTER (?:VERBOSE )?({QUALIFIED})", text)
        return Classified(Lock.ACCESS_EXCLUSIVE, table, work="rewrites the table", risks=(Risk(
            "SAFE133", "rewrites the whole table under ACCESS EXCLUSIVE.",
            "pg_repack or pg_squeeze outside the migration, or a maintenance window.", REWRITE_TEXT, table),))
    if head == "REFRESH":
        return Classified(Lock.ACCESS_EXCLUSIVE, _first_table(rf"VIEW ({QUALIFIED})", text),
                          work="recomputes the materialized view")
    if re.match(r"(CREATE (OR REPLACE )?|DROP |ALTER )(FUNCTION|PROCEDURE)\b", upper):
        return Classified(Lock.NONE, takes_lock=False)  # catalog rows of the function only
    if head == "COMMENT":
        return Classified(Lock.SHARE_UPDATE_EXCLUSIVE, takes_lock=False)
    if head in ("CREATE", "ALTER", "DROP", "GRANT", "REVOKE"):
        return Classified(Lock.ACCESS_EXCLUSIVE, takes_lock=True)
    return Classified(Lock.ACCESS_EXCLUSIVE, work="runs the raw SQL", known=False)


def _row_writes(text, upper):
    match = re.match(rf"(UPDATE) (?:ONLY )?({QUALIFIED})|(DELETE) FROM (?:ONLY )?({QUALIFIED})", text, re.I)
    risks = ()
    table = None
    if match:
        table = table_name(match.group(2) or match.group(4))
        if not re.search(r"\bWHERE\b", _without_literals(upper)):
            risks = (Risk("SAFE138", "changes every row in one statement and one transaction: each row stays "
                          "locked until the migration commits, and application writes to them wait.",
                          "Backfill / RunPythonBatched (short keyset batches, resumable).",
                          "ROW EXCLUSIVE + row locks on every row until commit", table),)
    return Classified(Lock.ROW_EXCLUSIVE, table, takes_lock=False, risks=risks)


def _alter_table(text, table, actions):
    """``ALTER TABLE <table> <actions>``: the strongest lock and the first work of its actions."""
    if re.match(r"VALIDATE CONSTRAINT", actions, re.I):
        return Classified(Lock.SHARE_UPDATE_EXCLUSIVE, table, takes_lock=False)
    lock, work, risks, also = Lock.NONE, None, [], ()
    for action in _split_top_level(actions):
        action_lock, action_work, action_risks, action_also = _alter_action(text, table, action)
        lock = max(lock, action_lock)
        work = work or action_work
        risks.extend(action_risks)
        also += action_also
    return Classified(lock, table, work=work, risks=tuple(risks), also_locks=also)


def _alter_action(statement, table, action):
    """``(lock, work, risks, other locks)`` of one ALTER TABLE action."""
    upper = " ".join(action.upper().split())
    not_valid = bool(re.search(r"\bNOT\s+VALID\b", upper))
    add_column = re.match(r"ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?!CONSTRAINT\b|PRIMARY\b|UNIQUE\b|"
                          r"FOREIGN\b|CHECK\b|EXCLUDE\b)", action, re.I)
    if add_column:
        risks, work = [], None
        if re.search(r"\bNOT NULL\b", upper) and not re.search(r"\bDEFAULT\b", upper) and \
                not re.search(r"\bGENERATED\b", upper):
            risks.append(Risk("SAFE130", "adds a NOT NULL column without a default: it fails on a table with rows, "
                              "and the running code's INSERTs (which omit the column) fail.",
                              "add the column nullable or with a constant DEFAULT (AddColumnNullable), backfill, "
                              "then SetNotNull in the contract stage.", INSTANT_TEXT, table))
        if _VOLATILE_DEFAULT.search(action) or re.search(r"\bGENERATED ALWAYS AS\s*\(.*\)\s*STORED", upper):
            work = "rewrites the table (a value computed per row)"
            risks.append(Risk("SAFE133", "adds a column whose value is computed per row (a volatile default or a "
                              "stored generated column): PostgreSQL rewrites the whole table under ACCESS "
                              "EXCLUSIVE.", "add the column nullable, set the default, and backfill in batches.",
                              REWRITE_TEXT, table))
        if re.search(r"\b(PRIMARY KEY|UNIQUE)\b", upper):
            work = work or "builds a unique index"
            risks.append(_index_build(table))
        lock = Lock.ACCESS_EXCLUSIVE
        also = ()
        target = re.search(rf"\bREFERENCES\s+({QUALIFIED})", action, re.I)
        if target:
            also = ((table_name(target.group(1)), Lock.SHARE_ROW_EXCLUSIVE),)
            work = work or (None if not_valid else "checks every row against the referenced table")
        if re.search(r"\bCHECK\b", upper) and not not_valid:
            work = work or "validates every row"
        return lock, work, risks, also
    if re.match(r"ADD\s+(?:CONSTRAINT\s+" + IDENT + r"\s+)?(PRIMARY\s+KEY|UNIQUE|EXCLUDE)\b", action, re.I):
        if re.search(r"\bUSING\s+INDEX\s+(?!TABLESPACE)", upper):
            return Lock.ACCESS_EXCLUSIVE, None, [], ()  # attaches an index built beforehand: instant
        return Lock.ACCESS_EXCLUSIVE, "builds a unique index", [_index_build(table)], ()
    foreign = re.match(r"ADD\s+(?:CONSTRAINT\s+" + IDENT + r"\s+)?FOREIGN\s+KEY\b", action, re.I)
    check = re.match(r"ADD\s+(?:CONSTRAINT\s+" + IDENT + r"\s+)?CHECK\b", action, re.I)
    if foreign or check:
        risks = [] if not_valid else [Risk(
            "SAFE132", "adds a constraint without NOT VALID: PostgreSQL checks every row while holding a lock that "
            "blocks writes (ACCESS EXCLUSIVE for CHECK, SHARE ROW EXCLUSIVE on both tables for a foreign key).",
            "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a separate statement "
            "(AddCheckConstraint / AddForeignKey).",
            "ACCESS EXCLUSIVE or SHARE ROW EXCLUSIVE for a full validation scan", table)]
        if foreign:
            target = re.search(rf"\bREFERENCES\s+({QUALIFIED})", action, re.I)
            also = ((table_name(target.group(1)), Lock.SHARE_ROW_EXCLUSIVE),) if target else ()
            work = None if not_valid else "checks every row against the referenced table"
            return Lock.SHARE_ROW_EXCLUSIVE, work, risks, also
        return Lock.ACCESS_EXCLUSIVE, None if not_valid else "validates every row", risks, ()
    column = re.match(r"ALTER\s+(?:COLUMN\s+)?(" + IDENT + r")\s+(.*)$", action, re.I | re.S)
    if column:
        rest = " ".join(column.group(2).upper().split())
        if re.match(r"(SET DATA )?TYPE\b", rest):
            return Lock.ACCESS_EXCLUSIVE, "may rewrite the table and its indexes", [Risk(
                "SAFE133", "changes a column type: unless PostgreSQL can do it in place (varchar widening, varchar "
                "-> text) it rewrites the table and its indexes under ACCESS EXCLUSIVE.",
                "ChangeTypeViaCopy (shadow column kept in step by triggers), FinishChangeTypeViaCopy (contract).",
                REWRITE_TEXT, table)], ()
        if rest.startswith("SET NOT NULL"):
            return Lock.ACCESS_EXCLUSIVE, "scans the table for NULLs (unless a validated CHECK (col IS NOT NULL) " \
                "exists)", [Risk("SAFE134", "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE (unless a "
                                 "validated CHECK (col IS NOT NULL) exists).",
                                 "SetNotNull (CHECK NOT VALID, VALIDATE, then SET NOT NULL without a scan).",
                                 "ACCESS EXCLUSIVE for a full-table scan (blocks reads and writes)", table)], ()
        if rest.startswith("SET STATISTICS") or rest.startswith("SET (") or rest.startswith("RESET ("):
            return Lock.SHARE_UPDATE_EXCLUSIVE, None, [], ()
        return Lock.ACCESS_EXCLUSIVE, None, [], ()
    if re.match(r"DROP\s+(?!CONSTRAINT\b)", action, re.I):
        return Lock.ACCESS_EXCLUSIVE, None, [Risk(
            "SAFE135", "drops a column the running code may still select or insert.",
            "RemoveFieldSafely (expand: nullable, out of the model), DropColumn (contract).", INSTANT_TEXT, table)], ()
    if re.match(r"RENAME\s+(?!CONSTRAINT\b)", action, re.I):
        return Lock.ACCESS_EXCLUSIVE, None, [Risk(
            "SAFE136", "renames a column or the table under the running code, which keeps using the old name.",
            "RenameViaCopy / RenameModelWithView (expand), their Finish operations (contract).", INSTANT_TEXT,
            table)], ()
    if re.match(r"SET\s+(LOGGED|UNLOGGED|TABLESPACE|ACCESS\s+METHOD)\b", action, re.I):
        return Lock.ACCESS_EXCLUSIVE, "rewrites the table", [Risk(
            "SAFE133", "rewrites the whole table under ACCESS EXCLUSIVE.", "a maintenance window.", REWRITE_TEXT,
            table)], ()
    return Lock.ACCESS_EXCLUSIVE, None, [], ()


def _index_build(table):
    return Risk("SAFE131", "builds a unique or primary key index while blocking writes for the whole build.",
                "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX (AddUniqueConstraint).",
                SHARE_BUILD_TEXT, table)


def classify_script(sql):
    """``classify`` for text that may hold several statements: the strongest lock, the first work."""
    parts = [classify(statement) for statement in split_statements(sql)] or [classify("")]
    strongest = max(parts, key=lambda info: info.lock)
    work = next((info.work for info in parts if info.work), None)
    return Classified(strongest.lock, strongest.table, takes_lock=any(info.takes_lock for info in parts), work=work,
                      in_transaction=all(info.in_transaction for info in parts),
                      creates_table=next((info.creates_table for info in parts if info.creates_table), None),
                      risks=tuple(risk for info in parts for risk in info.risks), known=all(i.known for i in parts),
                      also_locks=tuple(lock for info in parts for lock in info.also_locks))


def tables_created(sql):
    """Tables ``CREATE TABLE`` statements in ``sql`` create (new, so nothing on them is risky yet)."""
    return [info.creates_table for info in map(classify, split_statements(sql)) if info.creates_table]
