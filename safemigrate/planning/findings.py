"""The risk rules' table and the finding they produce.

Kept apart from ``rules`` (which classifies operations) so that ``lint_sql``
(which classifies raw SQL) can build findings without importing ``rules``,
which imports it.
"""

from dataclasses import dataclass


ACCESS_EXCLUSIVE_INSTANT = "ACCESS EXCLUSIVE (instant catalog change; queues traffic if it waits)"
SHARE_BUILD = "SHARE for the whole index build (blocks writes)"
REWRITE = "ACCESS EXCLUSIVE for a full table rewrite (blocks reads and writes)"
SCAN = "ACCESS EXCLUSIVE for a full-table scan (blocks reads and writes)"
FK_VALIDATION = "SHARE ROW EXCLUSIVE on both tables for a full validation scan (blocks writes)"

#: Severities, strongest first. ``error``: breaks running code, or blocks reads or
#: writes for a time that grows with the table. ``warning``: a brief ACCESS
#: EXCLUSIVE lock with no scan. ``note``: the linter cannot tell; look at it.
SEVERITIES = ("error", "warning", "note")


#: Rows per second, for turning a table size into an order-of-magnitude lock
#: time. Measured with PostgreSQL 18 on a shared 2-core machine, 500k narrow
#: rows in cache (docs/pages/linter.md): a rewrite with two indexes ~450k/s,
#: an index build ~1.4M/s, a NOT NULL / CHECK scan 13-20M/s, an UPDATE of every
#: row ~120k/s. Wide rows and cold caches are slower: rank with these, do not
#: book a maintenance window on them.
REWRITE_RATE = 400_000
INDEX_RATE = 1_000_000
SCAN_RATE = 10_000_000
UPDATE_RATE = 100_000


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    title: str
    #: Rows per second of the locked work when the lock time grows with the table; None when instant.
    rows_per_second: "int | None" = None

    @property
    def scales_with_rows(self):
        return self.rows_per_second is not None


_RULES = [
    Rule("SAFE101", "error", "RemoveField drops a column the old code still uses"),
    Rule("SAFE102", "error", "DeleteModel drops a table the old code still uses"),
    Rule("SAFE103", "error", "a column is renamed under the running code"),
    Rule("SAFE104", "error", "a table is renamed under the running code"),
    Rule("SAFE105", "error", "NOT NULL column with a callable default", REWRITE_RATE),
    Rule("SAFE106", "error", "NOT NULL column without a database default"),
    Rule("SAFE107", "error", "AddField builds an index that blocks writes", INDEX_RATE),
    Rule("SAFE108", "error", "AddField adds a foreign key validated under lock", INDEX_RATE),
    Rule("SAFE109", "error", "a column type change rewrites the table", REWRITE_RATE),
    Rule("SAFE110", "error", "SET NOT NULL scans the table under ACCESS EXCLUSIVE", SCAN_RATE),
    Rule("SAFE111", "error", "AlterField builds an index that blocks writes", INDEX_RATE),
    Rule("SAFE112", "error", "AddIndex builds an index that blocks writes", INDEX_RATE),
    Rule("SAFE113", "warning", "RemoveIndex takes a brief ACCESS EXCLUSIVE lock"),
    Rule("SAFE114", "error", "a unique or exclusion constraint builds its index while blocking writes", INDEX_RATE),
    Rule("SAFE115", "error", "a constraint is validated under ACCESS EXCLUSIVE", SCAN_RATE),
    Rule("SAFE116", "error", "unique_together builds indexes that block writes", INDEX_RATE),
    Rule("SAFE117", "note", "a data migration: check that it is batched"),
    Rule("SAFE118", "error", "AlterField on a foreign key re-creates and re-validates the constraint", INDEX_RATE),
    Rule("SAFE130", "error", "raw SQL adds a NOT NULL column without a default"),
    Rule("SAFE131", "error", "raw SQL builds an index without CONCURRENTLY", INDEX_RATE),
    Rule("SAFE132", "error", "raw SQL adds a constraint without NOT VALID", SCAN_RATE),
    Rule("SAFE133", "error", "raw SQL rewrites the table", REWRITE_RATE),
    Rule("SAFE134", "error", "raw SQL runs SET NOT NULL", SCAN_RATE),
    Rule("SAFE135", "error", "raw SQL drops a column or a table, or truncates one"),
    Rule("SAFE136", "error", "raw SQL renames a column or a table"),
    Rule("SAFE137", "error", "raw SQL runs LOCK TABLE"),
    Rule("SAFE138", "error", "raw SQL updates or deletes every row in one statement", UPDATE_RATE),
    Rule("SAFE139", "warning", "raw SQL drops an index without CONCURRENTLY"),
    Rule("SAFE140", "error", "a safemigrate operation declares a blocking lock held through work", REWRITE_RATE),
    Rule("SAFE141", "error", "constrains or drops a column a background migration has not finished filling"),
    Rule("SAFE142", "note", "a rename window: the table's name is a view until the rename's contract"),
    Rule("SAFE143", "error", "PostgreSQL refuses the operation on a partitioned table"),
]
RULES = {rule.id: rule for rule in _RULES}

@dataclass(frozen=True)
class Finding:
    code: str
    operation: str
    problem: str
    fix: str
    lock: str = ""
    #: The table the lock is taken on, when known (for table sizes and "new table" checks).
    table: "str | None" = None
    #: For ``DROP INDEX`` in raw SQL: the index name, to find its table in the migration state.
    index: "str | None" = None

    @property
    def severity(self):
        return RULES[self.code].severity

    @property
    def rule(self):
        return RULES[self.code]

    def __str__(self):
        return f"[{self.code}] {self.operation}: {self.problem} Safe alternative: {self.fix}"
