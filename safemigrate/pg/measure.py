"""Measuring a migration run statement by statement: time, locks, rewrites, WAL, temp files, rows.

Three observers, each for what it sees best:

- ``Tracer``, a ``connection.execute_wrapper`` on the migrating connection,
  placed inside the execution path's own wrapper (``pg.execution.MigrationRun``)
  so it sees each statement as it reaches the server: Django's, safemigrate's,
  ``RunSQL``, the backfill batches, the lock-friendly steps a statement was
  rewritten into. It records wall time and rows changed, then sends one short
  query on the same connection: the WAL position (``pg_current_wal_insert_lsn``;
  the statement wrote the difference from the previous one) and, inside a
  transaction, the relation locks the session holds (``pg_locks`` for its own
  pid), so a lock taken and kept to commit is never missed however short the
  statement. The locks a statement *took* are the new ones since the previous
  statement of the same transaction (the idea of kaaveland/eugene's lock
  trace).
- ``LockSampler``, a thread on its own connection polling ``pg_locks`` for
  the migrating backend every few milliseconds. Locks are held until the
  transaction ends, which the wrapper cannot see (Django commits without a
  statement), so *how long* a lock was held comes from here: from the first
  to the last sample that saw it, to within one sampling interval. Locks
  taken outside a transaction (``CREATE INDEX CONCURRENTLY``) are only seen
  here.
- ``Probe``, a side connection that reads counters between steps: the
  relfilenode of every relation (a new one on the same oid means the table
  or index was rewritten; eugene's trick), relation sizes,
  ``pg_stat_user_tables`` row counters and ``pg_stat_database.temp_bytes``.
  The migrating session flushes its statistics first
  (``pg_stat_force_next_flush()``, PostgreSQL 15+), so the step's own work is
  counted in the step.

The scratch database has no other traffic during a step, so the server-wide
WAL position and the database's temp-file counter are the step's own.
"""

import functools
import re
import threading
import time
from dataclasses import dataclass, field

from .classify import classify, normalize, table_name
from .connect import connect
from .ddl import current_run, sending_declared_statements
from .locks import Lock


def _pg_locks_mode(lock):
    """``Lock.ACCESS_EXCLUSIVE`` -> ``"AccessExclusiveLock"``, as ``pg_locks.mode`` spells it."""
    return "".join(word.capitalize() for word in lock.name.split("_")) + "Lock"


#: ``pg_locks.mode`` -> the mode in PostgreSQL's words (``pg.locks.Lock.pg_name``).
MODE_NAMES = {_pg_locks_mode(lock): lock.pg_name for lock in Lock if lock is not Lock.NONE}
#: The modes that stop writes (and, for ACCESS EXCLUSIVE, reads) while held (``Lock.blocks_traffic``).
BLOCKING = {mode: name for mode, name in MODE_NAMES.items() if Lock.parse(name).blocks_traffic}
#: Relations with smaller oids are PostgreSQL's own catalogs.
FIRST_USER_OID = 16384
_DML = ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "WITH")

LSN = "pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"

#: After a statement inside a transaction: the WAL position and the relation locks the session holds.
AFTER_IN_TRANSACTION_SQL = f"""
    SELECT {LSN}, a.xact_start, l.relation::bigint,
           coalesce(n.nspname || '.', '') || coalesce(c.relname, l.relation::text), l.mode
    FROM pg_stat_activity a
    LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'relation' AND l.granted AND l.relation >= {FIRST_USER_OID}
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LEFT JOIN pg_class c ON c.oid = l.relation
    LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.pid = pg_backend_pid()"""
#: After a statement outside a transaction (its locks are already released).
AFTER_SQL = f"SELECT {LSN}"

#: One sample: the relation locks of the migrating backend, and the phase of an index build it runs
#: (``pg_stat_progress_create_index``: scanning, sorting, loading, waiting), on every row.
SAMPLE_SQL = f"""
    SELECT p.phase, l.relation::bigint, l.mode, l.granted
    FROM (SELECT %s::int AS pid) AS me
    LEFT JOIN pg_locks l ON l.pid = me.pid AND l.locktype = 'relation' AND l.relation >= {FIRST_USER_OID}
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LEFT JOIN pg_stat_progress_create_index p ON p.pid = me.pid"""

RELATIONS_SQL = """
    SELECT c.oid::bigint, n.nspname || '.' || c.relname, c.relkind, c.relfilenode::bigint, pg_relation_size(c.oid),
           CASE WHEN c.relkind = 'i' THEN (SELECT i.indrelid::regclass::text FROM pg_index i WHERE i.indexrelid = c.oid)
           END
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'i', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"""


def short_name(qualified):
    """``public.shop_item`` -> ``shop_item``; other schemas stay qualified."""
    return qualified[7:] if qualified.startswith("public.") else qualified


@dataclass
class Hold:
    """One relation lock of the migrating session, from first to last sight."""

    oid: int
    relation: str
    mode: str
    first: float
    last: float
    #: True when it was seen waiting (not granted) before it was granted.
    waited: bool = False
    #: False when only the statement trace saw it (held shorter than one sampling interval).
    sampled: bool = True
    #: The sampling interval: a lock seen from ``first`` to ``last`` was held that long plus up to two intervals.
    resolution: float = 0.0

    @property
    def seconds(self):
        """The middle of what the samples allow: last - first, plus one interval; half of one if no sample saw it."""
        if not self.sampled:
            return self.resolution / 2
        return self.last - self.first + self.resolution

    @property
    def blocking(self):
        return self.mode in BLOCKING

    @property
    def mode_name(self):
        return MODE_NAMES.get(self.mode, self.mode)


@dataclass
class StatementRecord:
    """All runs of one SQL text within a step (a backfill repeats its batch statement).

    ``table`` and ``lock`` (the expected lock, in words) come from the
    declared ``pg.statements.Statement`` when the runner sent one, else from
    the SQL-text classifier (``pg.classify``).
    """

    sql: str
    table: "str | None"
    lock: str
    count: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    rows: int = 0
    wal_bytes: int = 0
    #: Relation locks it took: {(relation, mode)}.
    locks: set = field(default_factory=set)
    spans: list = field(default_factory=list)
    #: True when other statements ran inside it (pg.execution rewrote it): its time is theirs.
    container: bool = False
    error: "str | None" = None
    #: The declared ``pg.statements.Statement`` it ran as (the runner sends ``DeclaredSQL``), or None.
    statement: object = None
    #: True for safemigrate's own statements (declared, or sent inside ``pg.ddl.declared_statements()``):
    #: their text can look like long work that their declaration rules out (SET NOT NULL after a CHECK).
    declared: bool = False
    #: Wall seconds of the same index build run again after the release (``planning.rebuilds``), else empty.
    repeats: list = field(default_factory=list)


@dataclass
class StepMeasurement:
    label: str
    started: float = 0.0
    ended: float = 0.0
    wal_bytes: int = 0
    temp_bytes: int = 0
    temp_files: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    #: {table: {"inserted", "updated", "deleted"}}
    table_rows: dict = field(default_factory=dict)
    #: [{"relation", "kind", "table", "bytes_before", "bytes_after"}]
    rewrites: list = field(default_factory=list)
    #: Relations the step created: [{"relation", "kind", "table", "bytes"}]
    new_relations: list = field(default_factory=list)
    statements: dict = field(default_factory=dict)
    holds: list = field(default_factory=list)
    #: [(backfill name, seconds, rows, monotonic time it committed)]
    batches: list = field(default_factory=list)
    #: [(index-build phase, start, end)] from pg_stat_progress_create_index (``LockSampler._phase``)
    index_phases: list = field(default_factory=list)

    @property
    def seconds(self):
        return self.ended - self.started


class Probe:
    """A side connection to the scratch database for counters between steps."""

    def __init__(self, settings):
        self.connection = connect(settings, application_name="safemigrate:rehearse:probe")

    def lsn(self):
        return self.connection.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint").fetchone()[0]

    def counters(self):
        database = self.connection.execute(
            "SELECT temp_bytes, temp_files FROM pg_stat_database WHERE datname = current_database()").fetchone()
        tables = {f"{schema}.{name}": (ins, upd, dele) for schema, name, ins, upd, dele in self.connection.execute(
            "SELECT schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables").fetchall()}
        relations = {row[0]: row[1:] for row in self.connection.execute(RELATIONS_SQL).fetchall()}
        return {"temp_bytes": database[0], "temp_files": database[1], "tables": tables, "relations": relations,
                "lsn": self.lsn()}

    def close(self):
        self.connection.close()


class LockSampler(threading.Thread):
    """Polls ``pg_locks`` for one backend pid; keeps every lock's first and last sighting."""

    def __init__(self, settings, interval_s=0.005):
        super().__init__(daemon=True, name="safemigrate-lock-sampler")
        self.interval = interval_s
        self.connection = connect(settings, application_name="safemigrate:rehearse:locks")
        self.pid = None
        self.active = {}
        self.holds = []
        #: [phase, start, end, still open] of each index-build phase seen (see ``_phase``).
        self.phases = []
        self._previous = None
        self.samples = 0
        self.error = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def watch(self, pid):
        with self._lock:
            self.pid = pid

    def run(self):
        try:
            while not self._stopping.is_set():
                with self._lock:
                    pid = self.pid
                if pid is not None:
                    rows = self.connection.execute(SAMPLE_SQL, [pid]).fetchall()
                    self._update(rows, time.monotonic())
                self._stopping.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported with the results, never kills the rehearsal
            self.error = f"{type(exc).__name__}: {exc}"

    def _update(self, rows, now):
        seen = set()
        with self._lock:
            self.samples += 1
            phase = rows[0][0] if rows else None
            self._phase(phase, now)
            for _phase, oid, mode, granted in rows:
                if oid is None:
                    continue
                key = (oid, mode)
                seen.add(key)
                hold = self.active.get(key)
                if hold is None:
                    hold = self.active[key] = Hold(oid, str(oid), mode, now, now, waited=not granted,
                                                   resolution=self.interval)
                if granted:
                    if hold.waited and hold.last == hold.first:
                        hold.first = now  # the hold starts when the lock is granted
                    hold.last = now
            for key in [k for k in self.active if k not in seen]:
                self.holds.append(self.active.pop(key))

    def _phase(self, phase, now):
        """Extend the current index-build phase or start the next: ``self.phases`` holds [phase, start, end, open].

        A phase's bounds are the midpoints between the sample that first (last)
        saw it and the sample before (after) it: the samples' real gaps, which
        grow when the machine is busy and the sampler thread waits for a core,
        not the nominal interval. Consecutive phases then share a bound, and
        what is left between them is time the view showed no build at all (the
        transactions ``CONCURRENTLY`` commits between its phases): fixed work.
        """
        current = self.phases[-1] if self.phases and self.phases[-1][3] else None
        previous, self._previous = self._previous, now
        if current is not None and current[0] == phase:
            current[2] = now
            return
        if current is not None:
            current[2], current[3] = (current[2] + now) / 2, False
        if phase is not None:
            start = now if previous is None else (previous + now) / 2
            self.phases.append([phase, start, now, True])

    def finish(self):
        self._stopping.set()
        self.join(10)
        with self._lock:
            self.holds.extend(self.active.values())
            self.active.clear()
        self.connection.close()
        return self.holds


class Tracer:
    """The execute wrapper: per-statement time, rows, WAL and locks taken (see the module docstring).

    One short query follows each statement on the same connection (the WAL
    position, and inside a transaction the session's relation locks); the
    WAL position before a statement is the one read after the previous, so
    tracing costs one round trip per statement.
    """

    def __init__(self, connection):
        self.connection = connection
        self.step = None
        #: True while the tracer also sits inside the migration's MigrationRun wrapper (see ``Meter.attach``).
        self.inside = False
        self.names = {}
        self.lsn = 0
        self._stack = []
        self._xact = None
        self._held = set()

    def __call__(self, execute, sql, params, many, context):
        if self.inside:
            return execute(sql, params, many, context)  # traced further in, as it reaches the server
        return self.trace(execute, sql, params, many, context)

    def trace(self, execute, sql, params, many, context):
        if self.step is None or not isinstance(sql, str):
            return execute(sql, params, many, context)
        text = normalize(sql)
        record = self.step.statements.get(text)
        if record is None:
            record = self.step.statements[text] = _record(text, getattr(sql, "statement", None))
        if self._stack:
            self._stack[-1].container = True
        self._stack.append(record)
        wal_before = self.lsn
        started = time.monotonic()
        failed = False
        try:
            return_value = execute(sql, params, many, context)
        except Exception as exc:
            failed = True
            record.error = f"{type(exc).__name__}: {str(exc).strip()}"
            raise
        finally:
            ended = time.monotonic()
            self._stack.pop()
            record.count += 1
            record.seconds += ended - started
            record.max_seconds = max(record.max_seconds, ended - started)
            record.spans.append((started, ended))
            if not failed:
                record.error = None  # an earlier attempt's error (a lock timeout, retried) is not the outcome
                if text.split(" ", 1)[0].upper() in _DML:
                    rowcount = getattr(context.get("cursor"), "rowcount", -1)
                    record.rows += max(0, rowcount or 0)
                self._after(record)
                record.wal_bytes += max(0, self.lsn - wal_before)
        return return_value

    def _after(self, record):
        raw = self.connection.connection
        if not self.connection.in_atomic_block:
            self.lsn = raw.execute(AFTER_SQL).fetchone()[0]
            return
        rows = raw.execute(AFTER_IN_TRANSACTION_SQL).fetchall()
        if not rows:
            return
        self.lsn = rows[0][0]
        xact = rows[0][1]
        held = {(oid, name, mode) for _lsn, _x, oid, name, mode in rows if oid is not None}
        if xact != self._xact:
            self._xact, self._held = xact, set()
        for oid, name, mode in held - self._held:
            if name.startswith("pg_toast."):
                continue  # a table's TOAST relation goes with the table
            if name == str(oid):  # dropped in this transaction: its name is gone from the catalog
                name = self.names.get(oid, name)
            record.locks.add((short_name(name), mode))
            self.names.setdefault(oid, short_name(name))
        self._held = held


class _Inside:
    """A migration's ``MigrationRun`` wrapper with the tracer inside it.

    The execution path runs a lock-taking statement of a non-atomic migration
    in a short transaction of its own, and replaces some statements by their
    lock-friendly steps; traced inside that wrapper, each statement is seen as
    it reaches the server, within its transaction, so the locks it takes are
    read before that transaction ends.
    """

    def __init__(self, run, tracer):
        self.run, self.tracer = run, tracer

    def __call__(self, execute, sql, params, many, context):
        return self.run(functools.partial(self.tracer.trace, execute), sql, params, many, context)


def _record(text, statement):
    """A new ``StatementRecord``: the declared statement's table and lock when there is one, else the classifier's."""
    if statement is not None and getattr(statement, "lock", None) is not None:
        return StatementRecord(text, statement.table, statement.describe(), statement=statement, declared=True)
    info = classify(text)
    return StatementRecord(text, info.table or _dml_table(text), info.describe(),
                           declared=sending_declared_statements())


def _dml_table(text):
    """The table an INSERT/COPY names (the classifier names UPDATE's and DELETE's; estimates need all)."""
    match = re.match(r'(?:INSERT INTO|UPDATE|DELETE FROM|COPY)\s+((?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?)',
                     text, re.I)
    return table_name(match.group(1)) if match else None


class Meter:
    """Steps measured on one migrating Django connection of the scratch database."""

    def __init__(self, connection, settings, interval_ms=5):
        self.connection = connection
        self.probe = Probe(settings)
        self.sampler = LockSampler(settings, interval_ms / 1000.0)
        self.tracer = Tracer(connection)
        self.interval = interval_ms / 1000.0
        self.steps = []
        self._before = None

    def start(self):
        self.sampler.start()
        return self

    def installed(self):
        return self.connection.execute_wrapper(self.tracer)

    def attach(self):
        """Put the tracer inside the current migration's MigrationRun wrapper (again after a whole-migration retry).

        ``pg.execution.run_migration`` installs the run (``pg.ddl.current_run()``)
        as the last execute wrapper for the duration of one migration. The
        wrapper list keeps its length (``execute_wrapper`` pops the last entry
        on exit), so replacing the last entry is undone by that pop.
        """
        wrappers = self.connection.execute_wrappers
        run = current_run()
        if wrappers and run is not None and wrappers[-1] is run:
            wrappers[-1] = _Inside(run, self.tracer)
            self.tracer.inside = True

    def _flush_stats(self):
        self.connection.ensure_connection()
        self.connection.connection.execute("SELECT pg_stat_force_next_flush()")

    def begin(self, label):
        """Start measuring a step (between two migrations: the migrating session is idle)."""
        step = StepMeasurement(label)
        self.connection.ensure_connection()
        pid = self.connection.connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        self._flush_stats()
        self._before = self.probe.counters()
        self.sampler.watch(pid)
        step.started = time.monotonic()
        self.tracer.step = step
        self.tracer._xact = None
        self.tracer.lsn = self._before["lsn"]
        self.steps.append(step)
        self.attach()
        return step

    def end(self, report_batches=()):
        step = self.tracer.step
        step.ended = time.monotonic()
        self.tracer.step = None
        self.tracer.inside = False
        try:
            self._flush_stats()
        except Exception:  # noqa: BLE001 - a failed step may leave the session unusable for one query
            self.connection.close()
        after = self.probe.counters()
        before = self._before
        step.wal_bytes = max(0, after["lsn"] - before["lsn"])
        step.temp_bytes = max(0, after["temp_bytes"] - before["temp_bytes"])
        step.temp_files = max(0, after["temp_files"] - before["temp_files"])
        for table, (ins, upd, dele) in after["tables"].items():
            old = before["tables"].get(table, (0, 0, 0))
            delta = (ins - old[0], upd - old[1], dele - old[2])
            if any(delta):
                step.table_rows[short_name(table)] = dict(zip(("inserted", "updated", "deleted"), delta))
                step.rows_inserted += delta[0]
                step.rows_updated += delta[1]
                step.rows_deleted += delta[2]
        for oid, (name, kind, node, size, table) in after["relations"].items():
            self.tracer.names.setdefault(oid, short_name(name))
            old = before["relations"].get(oid)
            if old is None:
                step.new_relations.append({"relation": short_name(name), "kind": "index" if kind == "i" else "table",
                                           "table": short_name(table) if table else short_name(name), "bytes": size})
            elif old[2] != node:
                step.rewrites.append({"relation": short_name(name), "kind": "index" if kind == "i" else "table",
                                      "table": short_name(table) if table else short_name(name),
                                      "bytes_before": old[3], "bytes_after": size})
        for oid, (name, *_rest) in before["relations"].items():
            self.tracer.names.setdefault(oid, short_name(name))
        step.batches = list(report_batches)
        return step

    def finish(self):
        """Stop sampling; give each step the lock holds that fall in it."""
        holds = self.sampler.finish()
        self.probe.close()
        # A relation no step ever saw by name is a rewrite's transient copy (ALTER ... TYPE builds
        # the new table under a temporary oid): no other session can see it, so it blocks nobody.
        holds = [hold for hold in holds if hold.oid in self.tracer.names]
        for hold in holds:
            hold.relation = self.tracer.names[hold.oid]
        phases = [(phase, first, last) for phase, first, last, _open in self.sampler.phases]
        for step in self.steps:
            step.index_phases = [p for p in phases if p[2] >= step.started and p[1] <= step.ended]
            step.holds = [h for h in holds if h.last >= step.started and h.first <= step.ended]
            for hold in step.holds:
                # A lock first seen while a statement ran outside a transaction (CONCURRENTLY) is that one's.
                for record in step.statements.values():
                    if not record.container and any(start <= hold.first <= end for start, end in record.spans):
                        record.locks.add((hold.relation, hold.mode))
            seen = {(h.relation, h.mode) for h in step.holds}
            for record in step.statements.values():
                for relation, mode in record.locks:
                    if (relation, mode) not in seen:
                        # Taken and released between two samples: shorter than the interval.
                        start = record.spans[0][0]
                        step.holds.append(Hold(-1, relation, mode, start, start, sampled=False,
                                               resolution=self.interval))
                        seen.add((relation, mode))
        return self.sampler.error
