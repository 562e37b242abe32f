"""Data migrations in short, resumable batches (see ``safemigrate.pg.backfill``)."""

import hashlib

from django.db.migrations.operations.base import Operation

from ..pg import background_gate, backfill, background_mode, sql
from ..pg.copy_steps import discard_background, forget_progress
from ..pg.schema import collecting, model_of, table_of
from ..pg.statements import Batched, Call, Skipped
from .background_argument import BackgroundArgument
from .base import StandaloneOperation


def _digest(*parts):
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


class _Batched(BackgroundArgument, StandaloneOperation):
    requires_non_atomic = True
    reduces_to_sql = False

    @property
    def model_name_lower(self):
        return self.model_name.lower()

    def progress_name(self, app_label, direction, table):
        base = self.name or f"{app_label}.{table}.{self.__class__.__name__}.{self._identity()}"
        return base if direction == "forwards" else f"{base}:reverse"

    def _plan(self, app_label, schema_editor, state, direction):
        model = model_of(state, app_label, self.model_name)
        table = table_of(model)
        other = "reverse" if direction == "forwards" else "forwards"
        label = "backfill" if direction == "forwards" else "reverse backfill"
        if direction == "forwards" and self.copies_in_background(schema_editor, table):
            # The background runner keeps the progress; the contract steps that need the rows wait for it.
            return self.work(app_label, schema_editor, state, model, direction, label, background=True)
        plan = self.work(app_label, schema_editor, state, model, direction, label)
        filled = self.filled_columns(model)
        if filled:
            # A background migration still filling these columns: finish it, or refuse.
            plan = [Call("no background migration still fills the columns",
                         lambda connection: background_gate.require_finished(
                             self.describe(), connection, table=table, columns=filled), quiet=True), *plan]
        # Reversing resets the other direction, so applying again redoes the work.
        forget = [self.progress_name(app_label, other, table)]
        if getattr(self, "idempotent", False):
            # Its condition skips the rows it already changed, so a re-run
            # after a kill is harmless without the record: leave nothing.
            forget.append(self.progress_name(app_label, direction, table))
        plan = [*plan, *(forget_progress(name) for name in forget)]
        if direction == "backwards":
            plan.append(discard_background(self.progress_name(app_label, other, table)))
        return plan

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, to_state, "forwards")

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        if not self.reversible:
            raise NotImplementedError(f"{self.describe()} has no reverse, so it cannot be reversed.")
        return self._plan(app_label, schema_editor, to_state, "backwards")

    def filled_columns(self, model):
        """The columns it fills (the contract gate guards them while a background run fills them)."""
        return []

    @staticmethod
    def _column(model, name):
        try:
            return model._meta.get_field(name).column
        except Exception:
            return name

    def references_model(self, name, app_label):
        return name.lower() == self.model_name_lower


class Backfill(_Batched):
    """Set columns from SQL expressions, batch by batch.

    ``set`` maps field names (or column names) to SQL expressions, e.g.
    ``{"currency": "'EUR'"}`` or ``{"full_name": '"name"'}``; ``where`` is an
    optional SQL condition. Give ``reverse_set`` to make it reversible
    (``{}`` means reversing leaves the data as it is).
    """

    reduces_to_sql = True

    def __init__(self, model_name, set, where=None, params=None, reverse_set=None, reverse_where=None,
                 key=None, batch_target_ms=None, pause_ms=None, name=None, idempotent=False, background=None):
        #: True when ``where`` excludes the rows already set: no progress row
        #: is kept once it finishes (exactly-once needs none).
        self.idempotent = idempotent
        #: Run in the background (True), inside migrate (False), or as BACKGROUND_MIN_ROWS says (None).
        self.background = background
        self.model_name = model_name
        self.set = dict(set)
        self.where = where
        self.params = list(params or [])
        self.reverse_set = None if reverse_set is None else dict(reverse_set)
        self.reverse_where = reverse_where
        self.key = key
        self.batch_target_ms = batch_target_ms
        self.pause_ms = pause_ms
        self.name = name

    @property
    def reversible(self):
        return self.reverse_set is not None

    def _identity(self):
        return _digest(sorted(self.set.items()), self.where, self.params)

    @classmethod
    def _columns(cls, model, assignments):
        return [(cls._column(model, target), expression) for target, expression in assignments.items()]

    def filled_columns(self, model):
        return [self._column(model, target) for target in self.set]

    def work(self, app_label, schema_editor, state, model, direction, label, background=False):
        assignments = self.set if direction == "forwards" else self.reverse_set
        if not assignments:
            return [Call(label, lambda connection: Skipped("nothing to set"))]
        return [Batched(
            label, table_of(model), sql.assignments(self._columns(model, assignments)),
            self.where if direction == "forwards" else self.reverse_where,
            self.progress_name(app_label, direction, table_of(model)),
            params=tuple(self.params) if direction == "forwards" else (),
            key=self.key, batch_target_ms=self.batch_target_ms, pause_ms=self.pause_ms,
            background=background, columns=tuple(self.filled_columns(model)), idempotent=self.idempotent,
        )]

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "set": self.set}
        for name in ("where", "reverse_set", "reverse_where", "key", "batch_target_ms", "pause_ms", "name"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.params:
            kwargs["params"] = self.params
        if self.idempotent:
            kwargs["idempotent"] = True
        return self.with_background(kwargs)

    def describe(self):
        columns = ", ".join(self.set)
        return f"Backfill {self.model_name}.{columns} in batches"

    @property
    def migration_name_fragment(self):
        return f"backfill_{self.model_name_lower}_{'_'.join(self.set)}"[:60]


class RunPythonBatched(_Batched):
    """Call ``code(apps, rows)`` for each batch of rows, one transaction each.

    ``rows`` is a list of instances of the historical model (as in
    ``RunPython``), in primary key order.
    """

    def __init__(self, model_name, code, reverse_code=None, batch_target_ms=None, pause_ms=None, name=None,
                 idempotent=False, background=None):
        self.idempotent = idempotent
        #: Run in the background (True; ``code`` must be importable), inside migrate (False), or as
        #: BACKGROUND_MIN_ROWS says (None).
        self.background = background
        if not callable(code):
            raise ValueError("RunPythonBatched needs a callable: code(apps, rows).")
        self.model_name = model_name
        self.code = code
        self.reverse_code = reverse_code
        self.batch_target_ms = batch_target_ms
        self.pause_ms = pause_ms
        self.name = name

    @property
    def reversible(self):
        return self.reverse_code is not None

    def _identity(self):
        code = self.code
        keywords = sorted(getattr(code, "keywords", {}).items())
        code = getattr(code, "func", code)  # functools.partial: stable across runs
        return _digest(getattr(code, "__module__", ""), getattr(code, "__qualname__", ""), keywords)

    def filled_columns(self, model):
        """The column a generated fill writes (``field_name``); unknown for other functions."""
        field_name = getattr(self.code, "keywords", {}).get("field_name")
        return [self._column(model, field_name)] if field_name else []

    def work(self, app_label, schema_editor, state, model, direction, label, background=False):
        code = self.code if direction == "forwards" else self.reverse_code
        if code is Operation or code is RunPythonBatched.noop:
            return [Call(label, lambda connection: Skipped("no code to run"))]
        table = table_of(model)
        job = None
        if background and not collecting(schema_editor):
            # The runner is another process: it imports the code and rebuilds the models from its migration.
            job = background_mode.python_job(schema_editor.connection, self, app_label=app_label,
                                             model_name=self.model_name, code=code, description=self.describe())
        return [Batched(label, table, None, None, self.progress_name(app_label, direction, table),
                        key=model._meta.pk.column, batch_target_ms=self.batch_target_ms, pause_ms=self.pause_ms,
                        code=backfill.model_batch(schema_editor.connection, model, code, state.apps),
                        background=background, columns=tuple(self.filled_columns(model)),
                        idempotent=self.idempotent, job=job)]

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "code": self.code}
        for name in ("reverse_code", "batch_target_ms", "pause_ms", "name"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.idempotent:
            kwargs["idempotent"] = True
        return self.with_background(kwargs)

    def describe(self):
        code = getattr(self.code, "func", self.code)
        return f"Run {getattr(code, '__name__', 'code')} over {self.model_name} in batches"

    @property
    def migration_name_fragment(self):
        code = getattr(self.code, "func", self.code)
        return f"batched_{self.model_name_lower}_{getattr(code, '__name__', 'code')}"[:60]

    @staticmethod
    def noop(apps, rows):
        """Pass as ``reverse_code`` to make the operation reversible without a data change."""


def fill_with_field_default(apps, rows, app_label, model_name, field_name, default=None):
    """``RunPythonBatched`` code: give each row with NULL its own default value.

    For callable defaults with no SQL twin (``planning.defaults.sql_for``):
    Django would call the callable once for the whole column, so every row
    would share one "unique" value. Generated migration files reference it
    by this module's path. ``default``: a one-off callable default
    (``preserve_default=False``: the state's field has none).
    """
    model = apps.get_model(app_label, model_name)
    field = model._meta.get_field(field_name)
    changed = []
    for row in rows:
        if getattr(row, field.attname) is None:
            setattr(row, field.attname, default() if callable(default) else field.get_default())
            changed.append(row)
    if changed:
        # The database the rows came from (a migration may run on any alias).
        model._base_manager.using(changed[0]._state.db).bulk_update(changed, [field.name])
