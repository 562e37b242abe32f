"""Behaviour every safemigrate operation shares.

``SafeOperation`` holds three guards, checked before any SQL runs: the
router allows the migration on this alias (else the operation does nothing
there, quietly, as Django's do), the database is PostgreSQL, and (for steps
that cannot run in a transaction) the migration is non-atomic. Failing a
guard raises before anything changes, so the schema stays as it was.

An operation that does what a Django operation does, only without the long
lock, names that operation as its second base — ``CreateIndexConcurrently(
SafeOperation, AddIndex)`` — and overrides only the database steps and its
description: state changes, deconstruction, references and optimizer rules
stay Django's, so they cannot drift from the operation they stand in for.
Steps Django has no operation for derive from ``StandaloneOperation``.
"""

from django.db import router
from django.db.migrations.operations.base import Operation

from ..exceptions import AtomicMigrationError, NotPostgreSQLError
from ..stages import Stage


class SafeOperation(Operation):
    #: Which deploy stage may run this operation (see ``safemigrate.stages``).
    stage = Stage.EXPAND
    #: True for steps using CONCURRENTLY or several commits of their own.
    requires_non_atomic = False
    #: Strongest table lock the operation takes, for ``--plan`` output.
    lock_level = "ACCESS EXCLUSIVE (instant, bounded by lock_timeout)"

    def allowed(self, app_label, schema_editor, model_name=None, state=None):
        """Check the guards; False means the router skips this database.

        The router comes first, as in Django's own operations: an alias the
        router keeps this app off (a reporting replica, another vendor's
        database) is skipped quietly, whatever its backend.
        """
        connection = schema_editor.connection
        if model_name is not None and state is not None:
            model = state.apps.get_model(app_label, model_name)
            if not self.allow_migrate_model(connection.alias, model):
                return False
        elif not router.allow_migrate(connection.alias, app_label):
            return False
        if connection.vendor != "postgresql":
            raise NotPostgreSQLError(
                f"{self.__class__.__name__} runs only on PostgreSQL, but database "
                f"{connection.alias!r} uses the {connection.vendor} backend. Its lock-bounded "
                f"SQL (lock_timeout, CONCURRENTLY, NOT VALID) has no equivalent there. "
                f"Point this alias at PostgreSQL, or route this app's migrations away "
                f"from it with a database router."
            )
        if self.requires_non_atomic and connection.in_atomic_block and not getattr(
            schema_editor, "collect_sql", False
        ):
            raise AtomicMigrationError(
                f"{self.__class__.__name__} cannot run inside a transaction: it builds or "
                f"validates in several steps that each commit, so that no lock is held for "
                f"long. Add `atomic = False` to the Migration class that contains it (and keep "
                f"other operations out of that migration if they rely on atomicity)."
            )
        return True

    def reduce(self, operation, app_label):
        """Move past unrelated operations as Django's would, but never become a plain one.

        Django's optimizer (``squashmigrations``, ``makemigrations --update``)
        merges an operation with the next one on the same field: ``AddField`` +
        ``AlterField`` becomes a plain ``AddField`` (Django 5.2), or this
        operation rebuilt with the other's field (6.1) — either way a step
        whose locks or follow-up (the contract that drops a kept default) no
        longer fit. Only the outcomes that change no step are allowed: the two
        cancel out, or both come back as they were.
        """
        result = super().reduce(operation, app_label)
        if isinstance(result, list) and not all(op is self or op is operation for op in result):
            return False
        return result


class StandaloneOperation(SafeOperation):
    """An operation with no Django counterpart to inherit from.

    The others subclass Django's own (``AddIndex``, ``AlterField``, ...) and
    take its state change, deconstruction and optimizer rules as they are.
    These write their keyword arguments themselves, so that generated
    migration files read like Django's, with every argument named.
    """

    def deconstruct_kwargs(self):
        """The constructor's keyword arguments, as a migration file should spell them."""
        raise NotImplementedError

    def deconstruct(self):
        return (self.__class__.__qualname__, [], self.deconstruct_kwargs())
