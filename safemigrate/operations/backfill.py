"""Data migrations in short, resumable batches (see ``safemigrate.pg.backfill``)."""

import hashlib

from django.db.migrations.operations.base import Operation

from ..pg import backfill
from ..pg.reporting import step
from ..pg.schema import model_of, qn, table_of
from .base import StandaloneOperation


def _digest(*parts):
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


class _Batched(StandaloneOperation):
    requires_non_atomic = True
    lock_level = "row locks of one batch at a time (no table lock)"
    reduces_to_sql = False

    @property
    def model_name_lower(self):
        return self.model_name.lower()

    def state_forwards(self, app_label, state):
        pass

    def progress_name(self, app_label, direction, table):
        base = self.name or f"{app_label}.{table}.{self.__class__.__name__}.{self._identity()}"
        return base if direction == "forwards" else f"{base}:reverse"

    def _run(self, app_label, schema_editor, state, direction):
        if not self.allowed(app_label, schema_editor, self.model_name, state):
            return
        model = model_of(state, app_label, self.model_name)
        other = "reverse" if direction == "forwards" else "forwards"
        with step(self.describe(), "backfill" if direction == "forwards" else "reverse backfill") as record:
            self.run_engine(app_label, schema_editor, state, model, direction, record)
        if not getattr(schema_editor, "collect_sql", False):
            # Reversing resets the other direction, so applying again redoes the work.
            backfill.forget(schema_editor.connection, self.progress_name(app_label, other, table_of(model)))
            if getattr(self, "idempotent", False):
                # Its condition skips the rows it already changed, so a re-run
                # after a kill is harmless without the record: leave nothing.
                backfill.forget(schema_editor.connection, self.progress_name(app_label, direction, table_of(model)))

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._run(app_label, schema_editor, to_state, "forwards")

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
                 key=None, batch_target_ms=None, pause_ms=None, name=None, idempotent=False):
        #: True when ``where`` excludes the rows already set: no progress row
        #: is kept once it finishes (exactly-once needs none).
        self.idempotent = idempotent
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

    def _set_sql(self, schema_editor, model, assignments):
        parts = []
        for target, expression in assignments.items():
            try:
                column = model._meta.get_field(target).column
            except Exception:
                column = target
            parts.append(f"{qn(schema_editor, column)} = {expression}")
        return ", ".join(parts)

    def run_engine(self, app_label, schema_editor, state, model, direction, record):
        assignments = self.set if direction == "forwards" else self.reverse_set
        if not assignments:
            record.skipped = True
            return
        backfill.backfill_table(
            schema_editor,
            table_of(model),
            set_sql=self._set_sql(schema_editor, model, assignments),
            where_sql=self.where if direction == "forwards" else self.reverse_where,
            params=self.params if direction == "forwards" else None,
            key=self.key,
            progress_name=self.progress_name(app_label, direction, table_of(model)),
            batch_target_ms=self.batch_target_ms,
            pause_ms=self.pause_ms,
            record=record,
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.reverse_set is None:
            raise NotImplementedError(f"{self.describe()} has no reverse_set, so it cannot be reversed.")
        self._run(app_label, schema_editor, to_state, "backwards")

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "set": self.set}
        for name in ("where", "reverse_set", "reverse_where", "key", "batch_target_ms", "pause_ms", "name"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.params:
            kwargs["params"] = self.params
        if self.idempotent:
            kwargs["idempotent"] = True
        return kwargs

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
                 idempotent=False):
        self.idempotent = idempotent
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

    def run_engine(self, app_label, schema_editor, state, model, direction, record):
        code = self.code if direction == "forwards" else self.reverse_code
        if code is Operation or code is RunPythonBatched.noop:
            record.skipped = True
            return
        if getattr(schema_editor, "collect_sql", False):
            schema_editor.collected_sql.append(
                f"-- safemigrate: {self.describe()} (Python, in resumable batches; no SQL to show)"
            )
            return
        pk = model._meta.pk
        manager = model._base_manager.using(schema_editor.connection.alias)

        def batch(cursor, low, high, key_type):
            rows = manager.filter(pk__lte=pk.to_python(high))
            if low is not None:
                rows = rows.filter(pk__gt=pk.to_python(low))
            rows = list(rows.order_by("pk"))
            code(state.apps, rows)
            return len(rows)

        backfill.run_batches(
            schema_editor, table_of(model), batch, name=self.progress_name(app_label, direction, table_of(model)),
            key=pk.column, batch_target_ms=self.batch_target_ms, pause_ms=self.pause_ms, record=record,
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if self.reverse_code is None:
            raise NotImplementedError(f"{self.describe()} has no reverse_code, so it cannot be reversed.")
        self._run(app_label, schema_editor, to_state, "backwards")

    def deconstruct_kwargs(self):
        kwargs = {"model_name": self.model_name, "code": self.code}
        for name in ("reverse_code", "batch_target_ms", "pause_ms", "name"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.idempotent:
            kwargs["idempotent"] = True
        return kwargs

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
