"""The run lock: one ``migrate`` / ``migrate_contract`` at a time per database.

Why it is built this way (each point is a failure the first version had):

* **It cannot deadlock with the work it protects.** A waiting run never sits
  in a blocking ``pg_advisory_lock``: such a waiting statement holds a
  snapshot, a ``CREATE INDEX CONCURRENTLY`` of the running run waits for every
  older snapshot to go away, and the running run's lock is held by a
  *different* backend than its DDL, so PostgreSQL never sees the cycle and
  both wait forever. Waiters poll ``pg_try_advisory_xact_lock`` in a
  transaction of one statement and hold nothing between polls, for at most
  ``RUN_LOCK_WAIT_S``; then they fail naming the holder.
* **It works through a transaction-mode pooler.** The holder takes a
  *transaction-level* advisory lock and keeps that transaction open for the
  whole run. A pooler never reassigns a server connection in the middle of a
  transaction, so the lock stays on one server connection and the final
  ``ROLLBACK`` releases it there. (A session lock would stay behind on a
  pooled server connection.) The transaction takes no snapshot after its one
  statement and writes nothing: it holds back neither vacuum nor concurrent
  index builds. Its idle/transaction timeouts are switched off with
  ``SET LOCAL``, which ends with the transaction.
* **A dead run releases it at once.** The holding connection is idle, so the
  server sees its client's socket close and ends the transaction.
* **It goes through Django.** The lock connection is a separate Django
  connection built from the settings in use (so test databases are honoured),
  without Django's connection pool (a pooled connection held for a whole run
  starves the pool), and its errors are Django's ``OperationalError``.
* **Leftover work of a killed run is found.** Every connection of a run is
  tagged with ``application_name = safemigrate:<command>:<run id>``. Once a
  run holds the lock, any other tagged backend still executing a statement
  belongs to a run that no longer exists (a killed deploy job whose index
  build or backfill batch keeps going on the server). It is waited for
  (``ORPHANS = "wait"``) or cancelled (``"cancel"``), within
  ``ORPHAN_WAIT_S``, so the new run does not collide with it. On direct
  connections ``client_connection_check_interval`` also makes the server
  stop a statement whose client is gone.
"""

import contextlib
import time
import uuid

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from ..conf import conf
from ..exceptions import SafeMigrateError
from . import privileges
from .session import is_direct

TAG_PREFIX = "safemigrate:"
LOCK_SUFFIX = ":lock"
#: PostgreSQL truncates application_name to 63 bytes.
MAX_TAG = 63


class RunLockTimeout(SafeMigrateError):
    """Another run held the run lock for longer than ``RUN_LOCK_WAIT_S``."""

    def __init__(self, message, *, holder=None):
        super().__init__(message)
        self.holder = holder


class OrphanedWorkError(SafeMigrateError):
    """Statements of an earlier, dead run were still executing after ``ORPHAN_WAIT_S``."""

    def __init__(self, message, *, orphans=()):
        super().__init__(message)
        self.orphans = list(orphans)


def new_run_id():
    return uuid.uuid4().hex[:12]


def run_tag(command, run_id, lock=False):
    """The ``application_name`` of a run's connections."""
    tag = f"{TAG_PREFIX}{command}:{run_id}"[: MAX_TAG - len(LOCK_SUFFIX)]
    return tag + LOCK_SUFFIX if lock else tag


def _key_parts(key):
    """How pg_locks shows a bigint advisory key: (classid, objid, objsubid 1)."""
    key &= 0xFFFFFFFFFFFFFFFF
    return key >> 32, key & 0xFFFFFFFF


def open_lock_connection(connection, application_name):
    """A new Django connection to the database ``connection`` uses, outside any pool."""
    settings = dict(connection.settings_dict)
    options = dict(settings.get("OPTIONS") or {})
    options.pop("pool", None)
    options["application_name"] = application_name
    settings["OPTIONS"] = options
    settings["CONN_MAX_AGE"] = 0
    # The same alias as the connection it serves: connection_created receivers
    # look the alias up in django.db.connections (django.contrib.postgres does,
    # to register hstore/citext types), and an unknown alias makes them fail.
    lock_connection = type(connection)(settings, alias=connection.alias)
    lock_connection.ensure_connection()
    return lock_connection


def lock_holder(cursor, key):
    """Who holds the run lock: a dict, or None when nobody does."""
    classid, objid = _key_parts(key)
    cursor.execute(
        """
        SELECT l.pid, a.application_name, host(a.client_addr), a.client_port,
               a.xact_start, extract(epoch FROM now() - a.xact_start)::float
          FROM pg_locks l
          LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        [classid, objid],
    )
    row = cursor.fetchone()
    if row is None:
        return None
    names = ("pid", "application_name", "client_addr", "client_port", "since", "seconds")
    return dict(zip(names, row))


def describe_holder(holder):
    if holder is None:
        return "a run that ended just now"
    if holder["client_addr"]:
        client = f"{holder['client_addr']}:{holder['client_port']}"
    else:
        client = "a local Unix socket" if holder["client_port"] == -1 else "an address hidden from this role"
    since = f"since {holder['since']:%Y-%m-%d %H:%M:%S %Z} ({holder['seconds']:.0f}s)" if holder["since"] else ""
    return (
        f"backend pid {holder['pid']}, application_name {holder['application_name']!r}, "
        f"client {client}, {since}"
    ).rstrip(", ")


def _try_lock(cursor, key, pg_version):
    """One attempt; on success the transaction holding the lock stays open."""
    cursor.execute("BEGIN")
    timeouts = ["set_config('idle_in_transaction_session_timeout', '0', true)"]
    if pg_version >= 170000:
        timeouts.append("set_config('transaction_timeout', '0', true)")
    cursor.execute(f"SELECT pg_try_advisory_xact_lock(%s), {', '.join(timeouts)}", [key])
    if cursor.fetchone()[0]:
        return True
    cursor.execute("ROLLBACK")
    return False


def acquire(lock_connection, key, *, wait_s, echo=None, sleep=time.sleep):
    """Poll for the lock outside any transaction, for at most ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    delay = 0.1
    announced = False
    with lock_connection.cursor() as cursor:
        while True:
            if _try_lock(cursor, key, lock_connection.pg_version):
                return
            holder = lock_holder(cursor, key)
            if echo and not announced and holder is not None:
                echo(
                    "Another migration run holds the safemigrate lock on this database "
                    f"({describe_holder(holder)}); waiting for it to finish, at most {wait_s}s."
                )
                announced = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunLockTimeout(
                    f"Another migration run still holds the safemigrate run lock on database "
                    f"{lock_connection.settings_dict['NAME']!r} after {wait_s}s of waiting: "
                    f"{describe_holder(holder)}. Two runs applying schema changes at once would "
                    f"interleave their steps, so this run changed nothing and stops here instead of "
                    f"waiting without end. Let that run finish and run this command again (or raise "
                    f"SAFEMIGRATE['RUN_LOCK_WAIT_S']); if that run's process is gone, its lock goes "
                    f"with its connection: SELECT pg_terminate_backend(pid) ends a stuck one.",
                    holder=holder,
                )
            sleep(min(delay, remaining))
            delay = min(delay * 1.5, 2.0)


def release(lock_connection, echo=None):
    """End the lock transaction (releasing the lock) and close the connection."""
    try:
        with lock_connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
    except DatabaseError as exc:
        if echo:
            echo(
                f"The safemigrate run lock's connection was lost during the run ({exc}); the lock "
                "went with it, so another run may have started meanwhile. Check the migration "
                "history with `manage.py showmigrations` before deploying."
            )
    finally:
        lock_connection.close()


def find_orphans(cursor, run_id):
    """Backends of earlier runs still executing a statement (dicts)."""
    cursor.execute(
        """
        SELECT pid, application_name, state,
               extract(epoch FROM now() - query_start)::float AS seconds,
               left(query, 200) AS query
          FROM pg_stat_activity
         WHERE datname = current_database()
           AND pid <> pg_backend_pid()
           AND state = 'active'
           AND starts_with(application_name, %s)
           AND NOT application_name LIKE %s
           AND strpos(application_name, %s) = 0
         ORDER BY pid
        """,
        [TAG_PREFIX, "%" + LOCK_SUFFIX, f":{run_id}"],
    )
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def count_hidden_tagged(cursor, run_id):
    """Connections of another run this role may see exist but not whether they execute anything."""
    cursor.execute(
        """
        SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state IS NULL AND query = %s
           AND starts_with(application_name, %s) AND strpos(application_name, %s) = 0
        """,
        [privileges.HIDDEN_QUERY, TAG_PREFIX, f":{run_id}"],
    )
    return cursor.fetchone()[0]


def _describe_orphans(orphans):
    return "; ".join(
        f"pid {o['pid']} ({o['application_name']}, running {o['seconds'] or 0:.0f}s): {o['query']!r}"
        for o in orphans[:5]
    )


def settle_orphans(connection, run_id, *, mode, wait_s, echo=None, sleep=time.sleep):
    """Wait for (or cancel) statements a dead run left executing; returns what was found.

    Runs on the run's own connection in autocommit, not in the lock's
    transaction, which would otherwise keep catalog locks for the whole run.
    """
    with connection.cursor() as cursor:
        orphans = find_orphans(cursor, run_id)
        hidden = count_hidden_tagged(cursor, run_id)
        if hidden:  # another role's run, invisible without pg_read_all_stats: say so once
            privileges.note_hidden_orphans(connection, hidden)
        if not orphans:
            return []
        pids = [o["pid"] for o in orphans]
        if mode == "cancel":
            refused = []
            for pid in pids:
                try:
                    cursor.execute("SELECT pg_cancel_backend(%s)", [pid])
                    if not cursor.fetchone()[0]:
                        refused.append(pid)
                except DatabaseError:  # another role's backend, without pg_signal_backend
                    refused.append(pid)
            action = "cancelled them" + (
                f" ({privileges.cancel_refused_hint(connection, refused)})" if refused else "")
        else:
            action = f"waiting for them to finish, at most {wait_s}s"
        if echo:
            echo(
                "Statements of an earlier migration run that no longer exists are still executing: "
                f"{_describe_orphans(orphans)}; {action}."
            )
        deadline = time.monotonic() + wait_s
        while True:
            remaining = [o for o in find_orphans(cursor, run_id) if o["pid"] in pids]
            if not remaining:
                return orphans
            if time.monotonic() >= deadline:
                break
            sleep(0.2)
    raise OrphanedWorkError(
        f"Statements left running by an earlier, killed migration run were still executing after "
        f"{wait_s}s: {_describe_orphans(remaining)}. Starting the same schema change beside them "
        f"collides (deadlocks, duplicate index builds), so this run changed nothing. Wait for them, "
        f"or cancel them (SELECT pg_cancel_backend(pid), or SAFEMIGRATE['ORPHANS'] = 'cancel'; an "
        f"interrupted index build leaves an INVALID index that the next run rebuilds), then run again.",
        orphans=remaining,
    )


class _Tagger:
    """Tag a run's Django connection (and any reconnection of it) for the run's duration.

    ``application_name`` is reported by PostgreSQL to the client, so poolers
    such as PgBouncer track it per client: setting it is safe everywhere.
    ``client_connection_check_interval`` is a plain session setting, so it is
    set only on direct connections (see ``safemigrate.pg.session``).
    """

    def __init__(self, connection, tag, check_interval_ms):
        self.connection = connection
        self.tag = tag
        self.check_interval_ms = check_interval_ms
        self.saved = None

    def apply(self, sender=None, connection=None, **kwargs):
        if connection is not None and connection is not self.connection:
            return
        settings = {"application_name": self.tag}
        if self.check_interval_ms and self.connection.pg_version >= 140000 and is_direct(self.connection):
            settings["client_connection_check_interval"] = f"{int(self.check_interval_ms)}ms"
        with self.connection.cursor() as cursor:
            names = list(settings)
            cursor.execute(
                "SELECT " + ", ".join(["current_setting(%s)"] * len(names)), names
            )
            self.saved = dict(zip(names, cursor.fetchone()))
            for name, value in settings.items():
                try:
                    cursor.execute("SELECT set_config(%s, %s, false)", [name, value])
                except DatabaseError:
                    # Platforms without the socket check refuse a non-zero interval.
                    if name == "application_name":
                        raise
                    self.saved.pop(name)

    def restore(self):
        if not self.saved or self.connection.connection is None:
            return
        with contextlib.suppress(DatabaseError), self.connection.cursor() as cursor:
            for name, value in self.saved.items():
                cursor.execute("SELECT set_config(%s, %s, false)", [name, value])

    def __enter__(self):
        self.connection.ensure_connection()
        self.apply()
        connection_created.connect(self.apply, weak=False)
        return self

    def __exit__(self, *exc_info):
        connection_created.disconnect(self.apply)
        self.restore()


@contextlib.contextmanager
def run_lock(connection, *, command="migrate", echo=None, read_only=False, wait_s=None):
    """Hold the run lock for a migrate run on ``connection``'s database.

    ``read_only`` invocations (``--plan``, ``--check``) change nothing and
    never wait for another run: they get no lock at all.
    """
    if connection.vendor != "postgresql" or read_only:
        yield None
        return
    if not isinstance(connection, BaseDatabaseWrapper):  # django.db.connection, a proxy
        connection = connections[connection.alias]
    run_id = new_run_id()
    lock_connection = open_lock_connection(connection, run_tag(command, run_id, lock=True))
    try:
        acquire(
            lock_connection,
            conf.advisory_lock_id,
            wait_s=conf.run_lock_wait_s if wait_s is None else wait_s,
            echo=echo,
        )
    except BaseException:
        lock_connection.close()
        raise
    try:
        with _Tagger(connection, run_tag(command, run_id), conf.client_check_interval_ms):
            settle_orphans(connection, run_id, mode=conf.orphans, wait_s=conf.orphan_wait_s, echo=echo)
            yield run_id
    finally:
        release(lock_connection, echo=echo)
