"""The statement model: what safemigrate runs, declared as data.

The product's one question about any statement is "which lock does it take,
for how long, and is it safe to run again?". Here each statement carries the
answer with it instead of leaving it to be guessed from its text:

- ``Statement``: the SQL and its parameters, the strongest table lock it
  takes (``pg.locks.Lock``) and on which table, how it runs (``How``), the
  catalog condition that makes a re-run a no-op (``pg.checks``), and, for the
  rare statement that holds a blocking lock through real work, what that
  work is and why it is accepted;
- ``Transaction``: bounded statements that commit together (a swap, a
  rename with its view);
- ``Batched``: a keyset-batched ``UPDATE`` (the backfill engine);
- ``Call``: a step that reads the catalog or the table and may refuse
  (verifications, bookkeeping), for what is not a statement.

Operations build lists of these with the builders in ``pg.sql`` (the only
place DDL text is written) and hand them to ``pg.runner.run``, which
executes them. ``migrate --plan --annotate``, the plan JSON and the linter's
verdict on safemigrate's own operations read the very same objects; only SQL
nobody declared (Django's own operations, ``RunSQL``, third-party apps) goes
through the text classifier in ``pg.classify``.
"""

import enum
from dataclasses import dataclass, field, replace

from .locks import Lock, describe


class How(str, enum.Enum):
    """How a statement runs, which decides how long traffic can wait behind it."""

    #: In a short transaction of its own with ``lock_timeout``, retried with backoff:
    #: traffic waits at most the lock timeout, however long the lock queue is.
    BOUNDED = "bounded"
    #: Outside any transaction, without lock or statement timeout
    #: (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT): it takes SHARE UPDATE
    #: EXCLUSIVE at most, which neither reads nor writes wait for.
    CONCURRENT = "concurrent"
    #: In keyset batches, each its own short transaction: row locks only.
    BATCHED = "batched"
    #: Reads (the catalog, or the table under ACCESS SHARE): nothing waits for it.
    READ = "read"
    #: Holds a lock that blocks traffic through real work (a rewrite, a scan);
    #: only ever declared with the reason it is accepted, and bounded in time.
    UNBOUNDED = "unbounded"

    def __str__(self):
        return self.value


@dataclass(frozen=True)
class Statement:
    """One SQL statement and everything there is to know about running it."""

    sql: str
    params: tuple = ()
    #: The strongest table lock it takes.
    lock: Lock = Lock.ACCESS_EXCLUSIVE
    #: The table that lock is on (None: no table, or a new object only).
    table: "str | None" = None
    how: How = How.BOUNDED
    #: A few words for the run report ("add column x").
    label: str = ""
    #: Skip the statement when this holds (``pg.checks``): a re-run is a no-op.
    skip_if: object = None
    #: A concurrent index build: the index it creates. An INVALID leftover of
    #: a failed build is dropped and rebuilt; a valid one means it is done.
    #: On a partitioned table the runner builds it ``ON ONLY`` the parent, then
    #: partition by partition (``pg.partitions``).
    index: "str | None" = None
    #: What it does while holding ``lock`` beyond an instant catalog change.
    work: "str | None" = None
    #: Why holding the lock through ``work`` is accepted (``How.UNBOUNDED``).
    reason: "str | None" = None
    #: ``((sqlstate, handler), ...)``: ``handler(exc)`` runs when the statement
    #: fails with that SQLSTATE (after the runner cleaned up), and raises.
    on_error: tuple = ()
    #: Other tables it locks, ``((table, Lock), ...)`` (a foreign key's target).
    also_locks: tuple = ()
    #: A VALIDATE CONSTRAINT: the constraint it validates. On a partitioned
    #: table the runner validates it partition by partition (``pg.partitions``).
    validates: "str | None" = None
    #: A DROP INDEX CONCURRENTLY: the index it drops. PostgreSQL refuses
    #: CONCURRENTLY for a partitioned index; the runner drops it bounded instead.
    drops_index: "str | None" = None
    #: A rename window's own statement (``pg.windows``): it names the window's
    #: view and base table on purpose, so it runs as written, never pointed
    #: at the base table as other DDL on the table is while a window is open.
    as_written: bool = False

    def but(self, **changes):
        """A copy with some fields changed."""
        return replace(self, **changes)

    @property
    def blocks_traffic(self):
        """True when traffic would wait for this statement beyond its lock request."""
        return self.work is not None and self.lock.blocks_traffic

    def locks(self):
        """``[(table, Lock)]`` of every table lock it takes."""
        return [(self.table, self.lock), *self.also_locks]

    def describe(self):
        """The lock in words, as ``--plan --annotate`` prints it."""
        return describe(self.lock, work=self.work, waits=self.how in (How.BOUNDED, How.UNBOUNDED))


@dataclass(frozen=True)
class Transaction:
    """Bounded statements that commit together, or not at all.

    The transaction takes every lock its statements take and holds them
    until it commits, so it is only for instant catalog changes (a swap,
    a table renamed together with the view that replaces it).
    """

    label: str
    statements: tuple
    skip_if: object = None
    #: ``((sqlstate, handler), ...)``: ``handler(exc)`` runs when the transaction fails with that SQLSTATE.
    on_error: tuple = ()
    how = How.BOUNDED

    def __post_init__(self):
        object.__setattr__(self, "statements", tuple(self.statements))

    @property
    def table(self):
        """The table whose lock holders are named when the lock is not granted."""
        return next((s.table for s in self.statements if s.table), None)

    @property
    def lock(self):
        return max((s.lock for s in self.statements), default=Lock.NONE)

    def locks(self):
        return [pair for statement in self.statements for pair in statement.locks()]


@dataclass(frozen=True)
class Batched:
    """``UPDATE table SET <set_sql> WHERE <where_sql>`` in keyset batches (``pg.backfill``), or Python ``code``.

    ``set_sql`` / ``where_sql`` are SQL fragments with identifiers already
    quoted; ``params`` fill their ``%s``. ``progress`` names the resumable
    progress record, so a killed run continues after its last batch.

    With ``background`` the runner does not copy: it enqueues the batches
    as a background migration of that name for ``manage.py backfills run``
    (``pg.background_mode``), and ``migrate`` returns in seconds. The
    operation decides the mode when it builds its plan, so the rest of the
    plan knows it (a NOT NULL on the target waits for the contract step).
    """

    label: str
    table: str
    set_sql: "str | None"
    where_sql: "str | None"
    progress: str
    params: tuple = ()
    key: "str | None" = None
    batch_target_ms: "int | None" = None
    pause_ms: "int | None" = None
    #: ``((exception class, handler), ...)``, as ``Statement.on_error`` but by class.
    on_error: tuple = ()
    #: Python instead of SQL (``RunPythonBatched``): ``code(cursor, low, high, key_type)``
    #: changes the rows of one key range and returns how many.
    code: object = field(default=None, compare=False)
    #: Enqueue for the background runner instead of running now.
    background: bool = False
    #: The columns it fills: the contract steps that need them wait for a background copy.
    columns: tuple = ()
    #: Its ``where_sql`` skips the rows already done (kept with a background copy).
    idempotent: bool = False
    #: Python ``code`` as the background runner, another process, imports it
    #: (``pg.background_mode.PythonJob``); None for SQL or while only collecting.
    job: object = field(default=None, compare=False)
    how = How.BATCHED
    work = None

    @property
    def lock(self):
        """Row locks of one batch at a time; none at all in this migration when enqueued."""
        return Lock.NONE if self.background else Lock.ROW_EXCLUSIVE

    def locks(self):
        return [(self.table, self.lock)] if not self.background else []

    def describe(self):
        if self.background:
            return "no table lock (enqueued: the background runner takes row locks of one batch at a time)"
        return "ROW EXCLUSIVE (row locks of one batch at a time)"


@dataclass(frozen=True)
class Call:
    """A step that is not a statement: read the catalog or the table, check, refuse.

    ``function(connection)`` runs when the plan is executed (never when SQL
    is only collected); it may raise to stop the migration, and may return a
    short detail for the report. ``quiet`` steps (bookkeeping) leave no line.
    """

    label: str
    function: object = field(compare=False)
    lock: Lock = Lock.ACCESS_SHARE
    table: "str | None" = None
    quiet: bool = False
    how = How.READ
    work = None

    def locks(self):
        return [(self.table, self.lock)] if self.table else []

    def describe(self):
        return describe(self.lock, waits=False)


class Skipped(str):
    """What a ``Call`` returns when it found its work already done (the text says why)."""


def flatten(plan):
    """Every ``Statement`` / ``Batched`` / ``Call`` of ``plan``, transactions opened up."""
    for item in plan:
        if isinstance(item, Transaction):
            yield from item.statements
        else:
            yield item


class DeclaredSQL(str):
    """SQL text collected for ``sqlmigrate`` that still knows the statement it came from.

    Django's schema editor collects plain strings; ours are strings too (so
    ``sqlmigrate`` prints them unchanged), carrying their ``Statement`` so
    ``--plan --annotate`` reads the declared lock instead of parsing text.
    """

    statement = None

    def __new__(cls, text, statement):
        value = super().__new__(cls, text)
        value.statement = statement
        return value
