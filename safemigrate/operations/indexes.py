"""Indexes built and dropped CONCURRENTLY.

A plain CREATE INDEX holds a SHARE lock for the whole build: reads go on,
every write waits, for minutes on a big table. CONCURRENTLY takes only SHARE
UPDATE EXCLUSIVE, so traffic continues, at the price of running outside a
transaction and possibly leaving an INVALID index behind when it fails —
which the next run detects and rebuilds.
"""

from django.db.migrations.operations.models import AddIndex, RemoveIndex

from ..pg.reporting import step
from ..pg.schema import build_index_concurrently, drop_index_concurrently, model_of
from .base import SafeOperation


class CreateIndexConcurrently(SafeOperation, AddIndex):
    """``AddIndex`` without blocking writes; needs ``atomic = False``."""

    requires_non_atomic = True
    lock_level = "SHARE UPDATE EXCLUSIVE (reads and writes continue)"

    def __init__(self, model_name, index):
        if not index.name:
            raise ValueError(f"CreateIndexConcurrently needs a named index, got {index!r}.")
        super().__init__(model_name, index)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        with step(self.describe(), "build concurrently") as record:
            sql = self.index.create_sql(model, schema_editor, concurrently=True)
            build_index_concurrently(schema_editor, sql, self.index.name, record)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        with step(self.describe(), "drop concurrently"):
            drop_index_concurrently(schema_editor, self.index.name)

    def describe(self):
        return f"Create index {self.index.name} on {self.model_name} concurrently"


class DropIndexConcurrently(SafeOperation, RemoveIndex):
    """``RemoveIndex`` without the ACCESS EXCLUSIVE lock a plain DROP INDEX takes."""

    requires_non_atomic = True
    lock_level = "SHARE UPDATE EXCLUSIVE (reads and writes continue)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, from_state):
            return
        with step(self.describe(), "drop concurrently"):
            drop_index_concurrently(schema_editor, self.name)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if not self.allowed(app_label, schema_editor, self.model_name, to_state):
            return
        model = model_of(to_state, app_label, self.model_name)
        index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
        with step(self.describe(), "rebuild concurrently") as record:
            sql = index.create_sql(model, schema_editor, concurrently=True)
            build_index_concurrently(schema_editor, sql, index.name, record)

    def describe(self):
        return f"Drop index {self.name} from {self.model_name} concurrently"
