"""The cursor of a batched copy: ``safemigrate_backfill_progress``, one row per copy.

The last key done is committed in the same transaction as each batch, so a
killed run resumes after the last committed batch and a finished copy is
never redone. The table is created on first use rather than by a migration:
the engine runs from other apps' migrations, which may come before
safemigrate's own.

Batches of one copy are serialised by a transaction-level advisory lock
(``claim``), taken at the start of each batch transaction, and the cursor is
read again under it: an inline run, a background runner and a ``finalize``
working on the same copy at once then never process a range twice. A
transaction-level lock is released at COMMIT whatever happens to the client,
and works behind PgBouncer in transaction mode (a session lock would not).
"""

from dataclasses import dataclass

from django.db import transaction

from . import catalog

PROGRESS_TABLE = "safemigrate_backfill_progress"
#: First half of the two-int advisory key of a copy's batches (the second is the name's hash).
#: Two-int keys live apart from the bigint key of the run lock (ADVISORY_LOCK_ID).
BATCH_LOCK_CLASS = 72_617_002


def _q(connection):
    return connection.ops.quote_name(PROGRESS_TABLE)


def create_progress_table_sql(connection):
    """DDL of the progress table (a new table: no lock on anything existing)."""
    return f"""
        CREATE TABLE IF NOT EXISTS {_q(connection)} (
            name text PRIMARY KEY,
            table_name text NOT NULL,
            last_key text,
            upper_key text,
            rows bigint NOT NULL DEFAULT 0,
            batches integer NOT NULL DEFAULT 0,
            done boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL DEFAULT now()
        )
    """


def ensure_progress_table(connection):
    """Create the table on first use; two processes doing so at once take turns (an advisory lock),
    else both could pass ``IF NOT EXISTS`` and one would fail on the catalog's unique index."""
    if catalog.table_exists(connection, PROGRESS_TABLE):
        return
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 1)", [BATCH_LOCK_CLASS])
        cursor.execute(create_progress_table_sql(connection))


def forget(connection, name):
    """Drop the progress of ``name`` (used when an operation is reversed)."""
    if catalog.table_exists(connection, PROGRESS_TABLE):
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {_q(connection)} WHERE name = %s", [name])


def forget_table(connection, table):
    """Drop every progress record of ``table`` (the table itself is gone)."""
    if not catalog.table_exists(connection, PROGRESS_TABLE):
        return
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_q(connection)} WHERE table_name = %s", [table])


def progress_of(connection, name):
    if not catalog.table_exists(connection, PROGRESS_TABLE):
        return None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT last_key, upper_key, rows, batches, done FROM {_q(connection)} WHERE name = %s",
                       [name])
        row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(["last_key", "upper_key", "rows", "batches", "done"], row))


@dataclass
class Cursor:
    last: "str | None"
    upper: "str | None"
    rows: int
    batches: int
    done: bool


class Progress:
    """One copy's row in the progress table."""

    def __init__(self, connection, name, table, quoted_table, quoted_key):
        self.connection, self.name, self.table = connection, name, table
        self.quoted_table, self.quoted_key = quoted_table, quoted_key

    def start(self):
        """``(cursor, resumed)``: the saved cursor, or a new one whose upper bound is today's highest key.

        The highest key is read once: rows inserted later are not the copy's
        job (the expand step's triggers or defaults fill them), so a table
        under constant inserts cannot keep it running forever.
        """
        ensure_progress_table(self.connection)
        saved = progress_of(self.connection, self.name)
        if saved is not None:
            return Cursor(saved["last_key"], saved["upper_key"], saved["rows"], saved["batches"], saved["done"]), True
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT max({self.quoted_key})::text FROM {self.quoted_table}")
            upper = cursor.fetchone()[0]
            cursor.execute(
                f"INSERT INTO {_q(self.connection)} (name, table_name, upper_key) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                [self.name, self.table, upper],
            )
        saved = progress_of(self.connection, self.name)
        return Cursor(saved["last_key"], saved["upper_key"], saved["rows"], saved["batches"], saved["done"]), False

    def claim(self, cursor):
        """In a batch transaction: take this copy's batch lock (no wait) and read the cursor under it.

        None when another session is inside a batch of the same copy.
        """
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", [BATCH_LOCK_CLASS, self.name])
        if not cursor.fetchone()[0]:
            return None
        cursor.execute(f"SELECT last_key, upper_key, rows, batches, done FROM {_q(self.connection)} "
                       "WHERE name = %s", [self.name])
        row = cursor.fetchone()
        return None if row is None else Cursor(*row)

    def advance(self, cursor, high, last, changed, done):
        """Record a batch in its own transaction; returns the WAL position after it (for the lag clock)."""
        cursor.execute(
            f"UPDATE {_q(self.connection)} SET last_key = %s, rows = rows + %s, "
            "batches = batches + %s, done = %s, updated_at = now() WHERE name = %s "
            "RETURNING pg_current_wal_insert_lsn()::text",
            [high if high is not None else last, changed, 0 if high is None else 1, done, self.name],
        )
        return cursor.fetchone()[0]

    def finish(self):
        with self.connection.cursor() as cursor:
            cursor.execute(f"UPDATE {_q(self.connection)} SET done = true WHERE name = %s", [self.name])
