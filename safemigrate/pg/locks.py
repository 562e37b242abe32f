"""PostgreSQL's table lock modes, as data.

Every statement safemigrate runs declares the strongest of these it takes
(``pg.statements.Statement.lock``); the SQL-text classifier
(``pg.classify``) answers the same question for SQL nobody declared. Both
speak this one vocabulary, so ``--plan --annotate``, the plan JSON, the
linter and the execution path can never describe one lock in two ways.

The order is PostgreSQL's own (weakest to strongest). What a mode *blocks*
is what matters to traffic: ordinary reads take ACCESS SHARE and writes ROW
EXCLUSIVE, so a mode that conflicts with ACCESS SHARE stops every query on
the table, and one that conflicts with ROW EXCLUSIVE stops every write.
"""

import enum


class Lock(enum.IntEnum):
    """A table lock mode; ``NONE`` for statements that take no table lock (or only on new objects)."""

    NONE = 0
    ACCESS_SHARE = 1
    ROW_SHARE = 2
    ROW_EXCLUSIVE = 3
    SHARE_UPDATE_EXCLUSIVE = 4
    SHARE = 5
    SHARE_ROW_EXCLUSIVE = 6
    EXCLUSIVE = 7
    ACCESS_EXCLUSIVE = 8

    @property
    def pg_name(self):
        """The mode as PostgreSQL spells it (``"ACCESS EXCLUSIVE"``); ``"none"`` for NONE."""
        return "none" if self is Lock.NONE else self.name.replace("_", " ")

    @property
    def blocks(self):
        """What application traffic waits for while this lock is held (or queued for)."""
        if self >= Lock.ACCESS_EXCLUSIVE:
            return "reads and writes"
        if self >= Lock.SHARE:
            return "writes"
        return "nothing (only other schema changes)"

    @property
    def blocks_traffic(self):
        """True when reads or writes queue behind a request for this mode."""
        return self >= Lock.SHARE

    @classmethod
    def parse(cls, text):
        """``"ACCESS EXCLUSIVE"`` (any case, spaces or underscores) to the member."""
        return cls[" ".join(text.upper().replace("_", " ").split()).replace(" ", "_")]

    def __str__(self):
        return self.pg_name


def describe(lock, *, work=None, waits=True, new_table=False):
    """A lock in words, the same for declared statements and classified SQL.

    ``work``: what the statement does while holding it (None: an instant
    catalog change); ``waits``: whether the request can queue traffic
    (False for CONCURRENTLY, VALIDATE, reads and row writes);
    ``new_table``: the lock is on a table created in the same migration.
    """
    if lock is Lock.NONE:
        return "no table lock"
    if new_table:
        return f"{lock.pg_name} on the new table only"
    if work:
        return f"{lock.pg_name} ({lock.blocks} wait while it {work})"
    if not waits:
        if lock <= Lock.SHARE_UPDATE_EXCLUSIVE and lock != Lock.ROW_EXCLUSIVE:
            return f"{lock.pg_name} (reads and writes continue)"
        return f"{lock.pg_name} (row locks only)"
    return f"{lock.pg_name} (instant; {lock.blocks} queue while it waits)"
