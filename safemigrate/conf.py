"""The one place that reads ``settings.SAFEMIGRATE``.

Every property reads Django settings at access time, so ``override_settings``
works in tests and nothing is cached across a settings change. Values are
validated by ``safemigrate.checks`` at start-up; here they are only read.
"""

from dataclasses import dataclass

from django.conf import settings as django_settings

DEFAULTS = {
    # How long one lock request may wait before it gives up and retries.
    # Every query queued behind an ACCESS EXCLUSIVE request waits at most this
    # long, so it bounds the stall a migration can cause.
    "LOCK_TIMEOUT_MS": 200,
    # Attempts per lock-taking statement before failing with the blockers named.
    "LOCK_RETRIES": 30,
    # Backoff between attempts: BASE * 2**attempt, capped at MAX, plus jitter.
    "RETRY_BACKOFF_BASE_MS": 100,
    "RETRY_BACKOFF_MAX_MS": 5000,
    # Fraction of the backoff added or removed at random, so two deploy jobs
    # (or a job and a cron) do not retry in lockstep.
    "RETRY_JITTER": 0.5,
    # Rewrite plain Django SQL into its lock-friendly equivalent (index
    # CONCURRENTLY, constraints NOT VALID + VALIDATE) in non-atomic migrations.
    # Keys are app labels; "default" covers every app not named.
    "REWRITE_PLAIN_OPERATIONS": {"default": True},
    # Atomic migrations (Django's default; third-party and older ones): build
    # their indexes and unique constraints' indexes CONCURRENTLY before the
    # migration's transaction, then run the transaction with the build
    # skipped (a unique constraint attached USING INDEX, instant). Where the
    # rest of the migration does not allow it (see docs/pages/locks.md) the
    # statement stays inside, lock-bounded and reported. Keys are app labels;
    # "default" covers every app not named. Needs REWRITE_PLAIN_OPERATIONS.
    "ATOMIC_INDEX_BUILDS": {"default": "before"},
    # Stage of migrations that do not declare one, by app label or by
    # "app_label.migration_name" (the latter wins): "expand" or "contract".
    "STAGES": {},
    # Ceiling for the quick DDL steps (catalog-only ALTERs). Long steps
    # (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT, backfill batches)
    # run without a statement timeout.
    "STATEMENT_TIMEOUT_MS": 5000,
    # Backfill: how long one batch should take; the batch size adapts to it.
    "BATCH_TARGET_MS": 150,
    "BATCH_MIN_SIZE": 100,
    "BATCH_MAX_SIZE": 10000,
    "BATCH_INITIAL_SIZE": 1000,
    # Sleep between batches, to leave room for traffic (0 = none).
    "BATCH_PAUSE_MS": 0,
    # Pause a backfill while a streaming replica has not replayed WAL the
    # backfill wrote more than this long ago (None disables the check).
    "MAX_REPLICA_LAG_MS": 10000,
    # Longest single pause for a lagging replica before the backfill stops
    # with ReplicaLagError (its committed batches stay done; re-run resumes).
    # A replica that stopped replaying would otherwise hold the deploy forever.
    "REPLICA_LAG_MAX_WAIT_S": 600,
    # Key for the advisory lock that serializes migrate runs per database.
    "ADVISORY_LOCK_ID": 72_617_001,
    # lint_migrations: reviewed findings to stop reporting, each with the reason
    # it is safe ({"app", "migration", "rule", "reason"}; see docs/pages/linter.md).
    "LINT_IGNORE": [],
    # How long a run waits for another run to release that lock before it
    # fails naming the holder (it polls; it never blocks inside a statement).
    "RUN_LOCK_WAIT_S": 600,
    # Statements a killed earlier run left executing on the server (an index
    # build, a backfill batch): "wait" for them or "cancel" them, then go on.
    "ORPHANS": "wait",
    # How long to wait for those statements to end before failing.
    "ORPHAN_WAIT_S": 600,
    # client_connection_check_interval on a run's direct connections
    # (PostgreSQL 14+): the server stops a statement whose client is gone
    # within about this long. None leaves the server's setting alone.
    "CLIENT_CHECK_INTERVAL_MS": 1000,
    # Announce the migration history this code was built for in every
    # connection's application_name, so migrate_contract can refuse while
    # older code is connected (safemigrate.planning.gate).
    "ANNOUNCE_CODE_VERSION": False,
    # Minimum seconds between a contract migration's expand part and itself,
    # unless the Migration class sets contract_delay.
    "CONTRACT_DELAY_SECONDS": 0,
    # How makemigrations --safe renames a column: "view" (no rows copied; a
    # view keeps the old name until contract) wherever a view can serve, else
    # a copy; "copy" always copies (new column, dual-write trigger, backfill).
    "RENAME_STRATEGY": "view",
    # manage.py rehearse budgets, checked against the figures predicted for
    # production size; over one, rehearse exits 3 naming the step (None = no budget).
    # Longest hold of a lock that blocks writes (SHARE and stronger), in ms.
    "REHEARSE_MAX_LOCK_HOLD_MS": None,
    # Longest the whole expand stage (manage.py migrate) may take, in seconds.
    "REHEARSE_MAX_EXPAND_S": None,
    # Longest one backfill step may take, in seconds.
    "REHEARSE_MAX_BACKFILL_S": None,
    # rehearse --clone: argument list making a clone of the source ({name}, {source}
    # filled in); it prints the clone's postgresql:// URL on its last line.
    "REHEARSE_CLONE_COMMAND": None,
    # ... and the argument list that drops it again ({name}, {source}).
    "REHEARSE_DROP_COMMAND": None,
    # rehearse --sample: path of the pg_dump giving the source's schema; None
    # searches PATH and the usual install directories; False replays migrations.
    "REHEARSE_PG_DUMP": None,
    # What contract does with the columns and tables it removes, per app label
    # ("default" covers every app not named): "soft" renames a column out of
    # the way (instant, no rewrite), "copy" copies its (pk, value) pairs into
    # an archive table in batches and then drops it, False drops for real as
    # plain Django does. Tables move to ARCHIVE_SCHEMA unless False.
    # ``manage.py archive`` lists, restores and purges what was archived.
    "ARCHIVE": {"default": "soft"},
    # Schema holding archived tables, copy-mode archive tables and the manifest.
    "ARCHIVE_SCHEMA": "safemigrate_archive",
    # ``archive purge`` without ids drops archives older than this many days
    # (run it from cron); None keeps them until purged by id.
    "ARCHIVE_KEEP_DAYS": 30,
    # Background data migrations (docs/pages/background-migrations.md).
    # Estimated rows (pg_class.reltuples) at or above which a copy runs in the
    # background: makemigrations --safe writes background=True for such tables,
    # and an operation without the argument decides with it when it runs.
    # 500k rows take ~8 s inline at the 60k rows/s measured on a 2-core box:
    # below that, migrate stays short and needs no runner. None: never.
    "BACKGROUND_MIN_ROWS": 500_000,
    # Share of the time a background copy spends in batches (the rest it rests).
    "BACKGROUND_DUTY_CYCLE": 0.5,
    # How long a health signal that says stop puts a migration on hold.
    "BACKGROUND_HOLD_S": 30,
    # How long a contract step (or `backfills finalize` without
    # --max-inline-seconds) may run the rest of an unfinished copy inline
    # before it refuses, naming the migration. 0: refuse at once.
    "BACKGROUND_FINALIZE_INLINE_S": 60,
    # Health signals (None turns one off): WAL the server writes, bytes/s.
    "BACKGROUND_MAX_WAL_BYTES_PER_S": 64 * 1024 * 1024,
    # Age of the oldest open transaction in the database, seconds.
    "BACKGROUND_MAX_TRANSACTION_AGE_S": 300,
    # Sessions queued for a table lock on the copy's table.
    "BACKGROUND_MAX_LOCK_WAITERS": 0,
    # Client connections in use / connections available.
    "BACKGROUND_MAX_CONNECTION_USE": 0.9,
    # Hold the copy while a VACUUM (auto or manual) runs on its table.
    "BACKGROUND_PAUSE_DURING_VACUUM": True,
    # Dotted path of a callable(connection=..., table=...) returning a reason
    # to stop (a string) or None.
    "BACKGROUND_HEALTH_CHECK": None,
}


@dataclass(frozen=True)
class _Setting:
    key: str

    def __get__(self, instance, owner):
        if instance is None:
            return self
        user = getattr(django_settings, "SAFEMIGRATE", None) or {}
        return user.get(self.key, DEFAULTS[self.key])


class Settings:
    """Typed, documented access to ``settings.SAFEMIGRATE``."""

    lock_timeout_ms: int = _Setting("LOCK_TIMEOUT_MS")
    lock_retries: int = _Setting("LOCK_RETRIES")
    retry_backoff_base_ms: int = _Setting("RETRY_BACKOFF_BASE_MS")
    retry_backoff_max_ms: int = _Setting("RETRY_BACKOFF_MAX_MS")
    retry_jitter: float = _Setting("RETRY_JITTER")
    rewrite_plain_operations: dict = _Setting("REWRITE_PLAIN_OPERATIONS")
    atomic_index_builds: dict = _Setting("ATOMIC_INDEX_BUILDS")
    stages: dict = _Setting("STAGES")
    statement_timeout_ms: int = _Setting("STATEMENT_TIMEOUT_MS")
    batch_target_ms: int = _Setting("BATCH_TARGET_MS")
    batch_min_size: int = _Setting("BATCH_MIN_SIZE")
    batch_max_size: int = _Setting("BATCH_MAX_SIZE")
    batch_initial_size: int = _Setting("BATCH_INITIAL_SIZE")
    batch_pause_ms: int = _Setting("BATCH_PAUSE_MS")
    max_replica_lag_ms: "int | None" = _Setting("MAX_REPLICA_LAG_MS")
    replica_lag_max_wait_s: int = _Setting("REPLICA_LAG_MAX_WAIT_S")
    advisory_lock_id: int = _Setting("ADVISORY_LOCK_ID")
    lint_ignore: list = _Setting("LINT_IGNORE")
    run_lock_wait_s: int = _Setting("RUN_LOCK_WAIT_S")
    orphans: str = _Setting("ORPHANS")
    orphan_wait_s: int = _Setting("ORPHAN_WAIT_S")
    client_check_interval_ms: "int | None" = _Setting("CLIENT_CHECK_INTERVAL_MS")
    announce_code_version: bool = _Setting("ANNOUNCE_CODE_VERSION")
    contract_delay_seconds: float = _Setting("CONTRACT_DELAY_SECONDS")
    rename_strategy: str = _Setting("RENAME_STRATEGY")
    rehearse_max_lock_hold_ms: "float | None" = _Setting("REHEARSE_MAX_LOCK_HOLD_MS")
    rehearse_max_expand_s: "float | None" = _Setting("REHEARSE_MAX_EXPAND_S")
    rehearse_max_backfill_s: "float | None" = _Setting("REHEARSE_MAX_BACKFILL_S")
    rehearse_clone_command: "list | None" = _Setting("REHEARSE_CLONE_COMMAND")
    rehearse_drop_command: "list | None" = _Setting("REHEARSE_DROP_COMMAND")
    rehearse_pg_dump: "str | bool | None" = _Setting("REHEARSE_PG_DUMP")
    archive: dict = _Setting("ARCHIVE")
    archive_schema: str = _Setting("ARCHIVE_SCHEMA")
    archive_keep_days: "int | None" = _Setting("ARCHIVE_KEEP_DAYS")
    background_min_rows: "int | None" = _Setting("BACKGROUND_MIN_ROWS")
    background_duty_cycle: float = _Setting("BACKGROUND_DUTY_CYCLE")
    background_hold_s: float = _Setting("BACKGROUND_HOLD_S")
    background_finalize_inline_s: float = _Setting("BACKGROUND_FINALIZE_INLINE_S")
    background_max_wal_bytes_per_s: "int | None" = _Setting("BACKGROUND_MAX_WAL_BYTES_PER_S")
    background_max_transaction_age_s: "float | None" = _Setting("BACKGROUND_MAX_TRANSACTION_AGE_S")
    background_max_lock_waiters: "int | None" = _Setting("BACKGROUND_MAX_LOCK_WAITERS")
    background_max_connection_use: "float | None" = _Setting("BACKGROUND_MAX_CONNECTION_USE")
    background_pause_during_vacuum: bool = _Setting("BACKGROUND_PAUSE_DURING_VACUUM")
    background_health_check: "str | None" = _Setting("BACKGROUND_HEALTH_CHECK")

    def raw(self):
        """The user's dict as given (for checks that report unknown keys)."""
        return getattr(django_settings, "SAFEMIGRATE", None) or {}

    def rewrites_plain_operations(self, app_label):
        """Whether plain SQL of ``app_label``'s migrations may be rewritten."""
        table = self.rewrite_plain_operations or {}
        return bool(table.get(app_label, table.get("default", True)))

    def prebuilds_indexes(self, app_label):
        """Whether index builds of ``app_label``'s atomic migrations move before their transaction."""
        table = self.atomic_index_builds or {}
        mode = table.get(app_label, table.get("default", "before"))
        return mode == "before" and self.rewrites_plain_operations(app_label)

    def archive_mode(self, app_label):
        """``"soft"``, ``"copy"`` or None (drop for real) for what ``app_label``'s contract removes."""
        table = self.archive or {}
        mode = table.get(app_label, table.get("default", "soft"))
        return mode or None


conf = Settings()
