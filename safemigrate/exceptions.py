"""Errors raised by safemigrate.

Every message follows the same shape: what happened, why it is dangerous for a
live site, and the exact safe alternative. They all derive from
``SafeMigrateError`` so deploy scripts can catch one type.
"""

from django.core.exceptions import ImproperlyConfigured


class SafeMigrateError(Exception):
    """Base class for every error safemigrate raises on purpose."""


class NotPostgreSQLError(SafeMigrateError, ImproperlyConfigured):
    """A safemigrate operation or command was pointed at another database."""


class AtomicMigrationError(SafeMigrateError):
    """A step that must run outside a transaction sits in an atomic migration."""


class LockTimeoutExhausted(SafeMigrateError):
    """Every attempt to take a table lock timed out behind other sessions."""

    def __init__(self, message, *, table=None, attempts=0, blockers=()):
        super().__init__(message)
        self.table = table
        self.attempts = attempts
        self.blockers = list(blockers)


class UnsafeOperationError(SafeMigrateError):
    """A change no strategy can apply without downtime; the message lists manual steps."""


class MissingPrimaryKeyError(SafeMigrateError):
    """A batched step needs a single-column key to paginate on and the table has none."""


class StageOrderError(SafeMigrateError):
    """A contract migration would run before the expand migration it relies on."""


class ReplicaLagError(SafeMigrateError):
    """A backfill waited longer than REPLICA_LAG_MAX_WAIT_S for a lagging replica.

    Its committed batches stay done: running the migration again resumes.
    """

    def __init__(self, message, *, name=None, lag_ms=0.0, waited_s=0.0, replicas=()):
        super().__init__(message)
        self.name = name
        self.lag_ms = lag_ms
        self.waited_s = waited_s
        self.replicas = list(replicas)


class ArchiveError(SafeMigrateError):
    """An archive cannot be restored or purged as asked; nothing was changed."""


class MissingPrivilegeError(SafeMigrateError):
    """The migration role lacks a grant the planned migrations need; found before anything ran.

    ``problems`` lists one ``pg.privileges.Problem`` per missing grant (grant, object, fix).
    """

    def __init__(self, message, *, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class BackgroundMigrationError(SafeMigrateError):
    """A background migration command was given something it cannot act on (the message says why)."""

    #: Exit status of ``manage.py backfills`` for this error.
    exit_status = 1


class UnknownBackgroundMigration(BackgroundMigrationError):
    """No background migration has that name."""

    exit_status = 2


class BackgroundMigrationUnfinished(UnsafeOperationError):
    """A contract step needs a column that a background migration has not finished filling."""

    def __init__(self, message, *, names=()):
        super().__init__(message)
        self.names = list(names)
