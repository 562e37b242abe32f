"""Behaviour every safemigrate operation shares.

An operation is a plan: ``forwards_plan`` / ``backwards_plan`` return the
statements it runs (``pg.statements``, built with ``pg.sql``), and
``SafeOperation.database_forwards`` / ``database_backwards`` hand them to the
one runner (``pg.runner``). Before anything runs, one guard checks three
things, as Django's own ``NotInTransactionMixin`` does for its operations:
the router allows the migration on this alias (else the operation does
nothing there, quietly, as Django's do), the database is PostgreSQL, and
(for steps that cannot run in a transaction) the migration is non-atomic.
Failing a guard raises before anything changes, so the schema stays as it
was.

An operation that does what a Django operation does, only without the long
lock, names that operation as its second base — ``CreateIndexConcurrently(
SafeOperation, AddIndex)`` — and overrides only its plans and its
description: state changes, deconstruction, references and optimizer rules
stay Django's, so they cannot drift from the operation they stand in for.
Steps Django has no operation for derive from ``StandaloneOperation``.
"""

from django.db import connection as default_connection
from django.db import router
from django.db.migrations.operations.base import Operation

from ..exceptions import AtomicMigrationError, NotPostgreSQLError
from ..pg.runner import run
from ..pg.statements import flatten
from ..stages import Stage


class SafeOperation(Operation):
    #: Which deploy stage may run this operation (see ``safemigrate.stages``).
    stage = Stage.EXPAND
    #: True for steps using CONCURRENTLY or several commits of their own.
    requires_non_atomic = False

    # -- the plans ----------------------------------------------------------------

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        """The plan items (``pg.statements``) applying this operation runs, in order."""
        return []

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        """The plan items reversing it runs (``from_state`` is the state with it applied)."""
        return []

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if self.runs_here(app_label, schema_editor, to_state, from_state):
            run(schema_editor, self.forwards_plan(app_label, schema_editor, from_state, to_state),
                label=self.describe())

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.runs_here(app_label, schema_editor, from_state, to_state):
            run(schema_editor, self.backwards_plan(app_label, schema_editor, from_state, to_state),
                label=self.describe())

    # -- the guard ----------------------------------------------------------------

    def routed_model_name(self):
        """The model the router is asked about (None: the app as a whole)."""
        return getattr(self, "model_name", None)

    def runs_here(self, app_label, schema_editor, state, other_state=None):
        """Check the guards; False means the router keeps this operation off this database.

        The router comes first, as in Django's own operations: an alias the
        router keeps this app off (a reporting replica, another vendor's
        database) is skipped quietly, whatever its backend. The model is
        looked up in ``state``, or in ``other_state`` when this operation
        creates or removes it.
        """
        connection = schema_editor.connection
        model_name = self.routed_model_name()
        model = None
        if model_name is not None:
            for candidate in (state, other_state):
                if candidate is not None and (app_label, model_name.lower()) in candidate.models:
                    model = candidate.apps.get_model(app_label, model_name)
                    break
        if model is not None:
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

    # -- what the plans declare -----------------------------------------------------

    def declared_statements(self, app_label, from_state, connection=default_connection):
        """The statements its forward plan declares, read without a database.

        The plan is built against a schema editor that only collects SQL, so
        catalog-dependent parts (a shadow column's drop, an index an earlier
        run left) are left out, exactly as ``sqlmigrate`` shows them. Lock
        descriptions, ``--plan --annotate`` and the linter read these.
        """
        to_state = from_state.clone()
        self.state_forwards(app_label, to_state)
        with connection.schema_editor(collect_sql=True, atomic=False) as editor:
            return list(flatten(self.forwards_plan(app_label, editor, from_state, to_state)))

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


class StageArgument:
    """The ``stage=`` keyword, for operations whose stage depends on the change.

    ``SetNotNull`` is expand when it makes a new column NOT NULL and contract
    when old code may still write NULLs; ``FinishChangeTypeViaCopy`` is
    contract, or expand for a widening both versions can share. The
    migration file says which (the class default is not written). Each class
    still spells ``stage=None`` in its own ``__init__``: Django's migration
    writer reads the argument names from that signature.
    """

    def set_stage(self, stage):
        if stage is not None:
            self.stage = Stage(stage)

    def deconstruct(self):
        name, args, kwargs = super().deconstruct()
        if self.stage is not type(self).stage:
            kwargs["stage"] = str(self.stage)
        return name, args, kwargs


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

    def state_forwards(self, app_label, state):
        """Most standalone steps change the database only; the state stays as it is."""
