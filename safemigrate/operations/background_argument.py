"""What the operations that copy rows share: the ``background`` argument."""

from ..pg import background_mode


class BackgroundArgument:
    """The ``background`` argument: where the operation's row copy runs.

    ``True`` enqueues the copy for ``manage.py backfills run``, ``False``
    copies inside ``migrate``, ``None`` (the default, not written to the
    migration file) lets ``BACKGROUND_MIN_ROWS`` decide against the table's
    estimated rows, in an expand migration only (``pg.background_mode``).
    ``makemigrations --safe`` writes the chosen mode, so the migration file
    says which one runs.

    The mode is decided when the plan is built, right before it runs: the
    plan then holds either the copy or its enqueueing, and whatever depends
    on the rows being there (a NOT NULL on the target) moves to the
    contract step.
    """

    background = None

    def with_background(self, kwargs):
        """Deconstructed ``kwargs``, with ``background`` when the migration file chose a mode."""
        if self.background is not None:
            kwargs["background"] = self.background
        return kwargs

    def copies_in_background(self, schema_editor, table):
        """True when this operation's copy on ``table`` is to be enqueued rather than run now."""
        return background_mode.runs_in_background(schema_editor.connection, table, self.background)
