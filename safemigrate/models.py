"""The state of background data migrations, one row each (docs/pages/background-migrations.md).

An expand migration that copies rows in the background writes one row here
(``enqueue``) and returns; ``manage.py backfills run`` (or a team's own task
queue, through ``run_pending``) works through the rows. The row is what the
control commands change, what the admin page shows and what the contract
gate reads.

The table is created by safemigrate's own migration *and*, when an app's
expand migration enqueues before that migration ran (no dependency edge
orders them), on first use with the same DDL (Django's schema editor on this
model; see ``safemigrate.pg.background_state.ensure_tables``). The key cursor
itself stays in ``safemigrate_backfill_progress``, committed with each batch,
as for inline backfills; this row mirrors the counters for display.
"""

from django.db import models


class State(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    ON_HOLD = "on_hold"
    FINISHED = "finished"
    FINALIZED = "finalized"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BackgroundMigration(models.Model):
    name = models.CharField(max_length=400, unique=True, help_text="The copy's progress name.")
    app_label = models.CharField(max_length=100, blank=True, default="")
    migration = models.CharField(max_length=255, blank=True, default="", help_text="The migration that enqueued it.")
    description = models.TextField(blank=True, default="")
    table_name = models.CharField(max_length=255)
    #: Columns it writes: what the contract gate and the linter guard.
    columns = models.JSONField(default=list)
    #: "sql" (UPDATE ... SET) or "python" (a RunPythonBatched function).
    kind = models.CharField(max_length=10)
    #: How to run a batch: the SQL fragments and parameters, or the function's path.
    spec = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    hold_until = models.DateTimeField(null=True, blank=True)
    hold_reason = models.TextField(blank=True, default="")
    #: The last throttle signal that said stop (kept after the hold ends).
    throttle_reason = models.TextField(blank=True, default="")
    #: Last reading of each health signal: {name: {"value", "limit", "unit", "stop"}}.
    health = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    rows_done = models.BigIntegerField(default=0)
    rows_total = models.BigIntegerField(default=0, help_text="Estimate (pg_class.reltuples) when enqueued.")
    batches = models.IntegerField(default=0)
    batch_size = models.IntegerField(default=0)
    #: Attempts of the current batch (a retried batch shrinks).
    attempts = models.IntegerField(default=0)
    retries = models.IntegerField(default=0)
    rows_per_second = models.FloatField(default=0.0)
    duty_cycle = models.FloatField(default=0.0, help_text="Share of the time spent in batches, not pausing.")
    last_batch_ms = models.IntegerField(default=0)
    last_batch_at = models.DateTimeField(null=True, blank=True)
    last_lsn = models.CharField(max_length=40, blank=True, default="")
    runner = models.CharField(max_length=200, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "safemigrate_background_migration"
        ordering = ["id"]
        permissions = [("control_backgroundmigration", "Can pause, resume and retry background migrations")]

    def __str__(self):
        return self.name

    @property
    def progress_percent(self):
        if self.state in (State.FINISHED, State.FINALIZED):
            return 100.0
        total = max(self.rows_total, self.rows_done)
        return round(100.0 * self.rows_done / total, 1) if total else 0.0

    @property
    def eta_seconds(self):
        """Seconds left at the recent rate (None when unknown or not running)."""
        if self.state in (State.FINISHED, State.FINALIZED, State.CANCELLED, State.FAILED):
            return 0 if self.state in (State.FINISHED, State.FINALIZED) else None
        if not self.rows_per_second:
            return None  # not measured yet
        return int(max(self.rows_total - self.rows_done, 0) / self.rows_per_second)

    @property
    def eta_text(self):
        """``eta_seconds`` for a person: "1h05m", "5m16s", "42s", or "-" when unknown."""
        seconds = self.eta_seconds
        if seconds is None:
            return "-"
        if seconds >= 3600:
            return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 60:
            return f"{seconds // 60}m{seconds % 60:02d}s"
        return f"{seconds}s"
