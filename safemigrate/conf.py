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

    def raw(self):
        """The user's dict as given (for checks that report unknown keys)."""
        return getattr(django_settings, "SAFEMIGRATE", None) or {}

    def rewrites_plain_operations(self, app_label):
        """Whether plain SQL of ``app_label``'s migrations may be rewritten."""
        table = self.rewrite_plain_operations or {}
        return bool(table.get(app_label, table.get("default", True)))


conf = Settings()
