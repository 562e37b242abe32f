"""The order an atomic migration takes its tables' locks in, learned from its failed attempts.

``lock_timeout`` bounds each lock *wait*, not what the transaction already holds
meanwhile. An atomic migration that changes two tables keeps the first one's
lock (ACCESS EXCLUSIVE for most DDL) until it commits; while it waits for the
second table, every query on the first queues behind it, for the whole
``lock_timeout`` on top of the migration's own work. Two rules bound that:

1. A table's lock requested while the transaction already holds a lock that
   blocks traffic on another table is first taken with a short wait
   (``probe_ms``: a quarter of ``LOCK_TIMEOUT_MS``, at least 10 ms) by a
   ``LOCK TABLE ONLY ... IN <mode> MODE`` of the statement's own mode. When it
   is not granted, the attempt fails like any lock timeout (SQLSTATE 55P03)
   and the whole migration is rolled back, releasing the first table.
2. The next attempt takes that table's lock first, at the start of its
   transaction, while it holds nothing, with the whole ``lock_timeout``.

A table locked first is then held through the migration's earlier work. When
that work was long (the failed attempt reached the table more than one
``lock_timeout`` after taking its first lock: an index build kept in the
transaction, a large ``RunSQL``), locking it first would stall its traffic
for longer than a wait does, so such a table is instead waited for where the
migration reaches it, with the whole ``lock_timeout``, as before.
"""

import time
from dataclasses import dataclass, field

from ..conf import conf
from .locks import Lock
from .sql import q

#: pg_locks' names of the modes that queue application traffic (``Lock.blocks_traffic``).
_BLOCKING_MODES = [
    "".join(word.title() for word in lock.name.split("_")) + "Lock" for lock in Lock if lock.blocks_traffic
]

_STATE = """
SELECT c.relkind,
       EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class o ON o.oid = l.relation
                WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
                  AND l.relation <> c.oid AND o.relkind IN ('r', 'p') AND o.relpersistence <> 't'
                  AND l.mode = ANY (%s)
                  AND o.oid <> ALL (SELECT to_regclass(n) FROM unnest(%s::text[]) n
                                     WHERE to_regclass(n) IS NOT NULL)),
       current_setting('lock_timeout')
  FROM pg_class c WHERE c.oid = to_regclass(%s)
"""


def probe_ms():
    """The short wait for a table's lock while another table is held."""
    return min(int(conf.lock_timeout_ms), max(10, int(conf.lock_timeout_ms) // 4))


@dataclass
class Contended:
    """A table whose lock an earlier attempt did not get."""

    table: str
    lock: Lock
    #: The attempt reached it soon enough after its first lock to lock it first next time.
    first: bool


@dataclass
class LockOrder:
    """What the attempts of one atomic migration learned, and what the current attempt holds."""

    contended: list = field(default_factory=list)
    held: dict = field(default_factory=dict)
    holding_since: "float | None" = None
    started: bool = False
    #: The wait (ms) of the request that failed last, for the retry's message.
    failed_wait_ms: "int | None" = None
    #: ``(table, lock)`` while its ``LOCK TABLE`` runs.
    pending: "tuple | None" = None

    def new_attempt(self):
        self.held = {}
        self.holding_since = None
        self.started = False
        self.failed_wait_ms = None
        self.pending = None

    def locks_first(self):
        """True when the attempt starts by locking tables an earlier attempt did not get."""
        return any(entry.first for entry in self.contended)

    def start(self, connection, new_tables):
        """At the attempt's first lock-taking statement: lock the contended tables first."""
        if self.started:
            return
        self.started = True
        for entry in self.contended:
            if entry.first:
                self.acquire(connection, entry.table, entry.lock, new_tables, force=True)

    def acquire(self, connection, table, lock, new_tables, *, force=False):
        """Take ``table``'s lock in ``lock``'s mode before the statement that needs it, per rules 1 and 2.

        Without ``force`` nothing is run unless another table is held (the
        statement's own bounded wait is then the only one). Raises
        ``OperationalError`` (55P03) when the lock is not granted.
        """
        if self.held.get(table, Lock.NONE) >= lock or lock is Lock.NONE:
            return
        with connection.cursor() as cursor:
            cursor.execute(_STATE, [_BLOCKING_MODES, [q(name) for name in new_tables], q(table)])
            row = cursor.fetchone()
            if row is None or row[0] not in ("r", "p"):
                return  # not there yet, or a view / sequence: the statement speaks for itself
            _kind, others, current = row
            waits_whole = any(entry.table == table and not entry.first for entry in self.contended)
            self.pending = (table, lock)
            if others and not waits_whole:
                wait = min(probe_ms(), _ms(current) or probe_ms())
                self.failed_wait_ms = wait
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{wait}ms"])
                cursor.execute(f"LOCK TABLE ONLY {q(table)} IN {lock.pg_name} MODE")
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [current])
            elif force:
                self.failed_wait_ms = _ms(current)
                cursor.execute(f"LOCK TABLE ONLY {q(table)} IN {lock.pg_name} MODE")
            self.failed_wait_ms = None
            self.pending = None
        self.granted(table, lock)

    def granted(self, table, lock):
        """The statement on ``table`` ran: its lock is held until the transaction ends."""
        if table and lock is not Lock.NONE:
            self.held[table] = max(lock, self.held.get(table, Lock.NONE))
            if lock.blocks_traffic and self.holding_since is None:
                self.holding_since = time.monotonic()

    def failed(self, table, lock):
        """``table``'s lock was not granted: the next attempt takes it first (or waits for it whole)."""
        if not table:
            return
        held_for = 0.0 if self.holding_since is None else (time.monotonic() - self.holding_since) * 1000
        first = held_for <= int(conf.lock_timeout_ms)
        self.contended = [Contended(table, lock, first)] + [e for e in self.contended if e.table != table]


def _ms(setting):
    """``lock_timeout`` as ``current_setting`` shows it ("200ms", "1s", "0") in milliseconds; 0 for none."""
    text = (setting or "0").strip()
    for unit, factor in (("ms", 1), ("min", 60_000), ("s", 1000), ("h", 3_600_000), ("d", 86_400_000)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(float(text))
