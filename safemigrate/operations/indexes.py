"""Indexes built and dropped CONCURRENTLY.

A plain CREATE INDEX holds a SHARE lock for the whole build: reads go on,
every write waits, for minutes on a big table. CONCURRENTLY takes only SHARE
UPDATE EXCLUSIVE, so traffic continues, at the price of running outside a
transaction and possibly leaving an INVALID index behind when it fails —
which the next run detects and rebuilds.
"""

from django.db.migrations.operations.models import AddIndex, RemoveIndex

from ..pg import sql
from ..pg.schema import model_of, table_of
from .base import SafeOperation


def build(model, index, schema_editor):
    """The plan that builds ``index`` on ``model`` concurrently."""
    statement = index.create_sql(model, schema_editor, concurrently=True)
    return [sql.create_index_concurrently(statement, index.name, table_of(model)).but(label="build concurrently")]


class CreateIndexConcurrently(SafeOperation, AddIndex):
    """``AddIndex`` without blocking writes; needs ``atomic = False``."""

    requires_non_atomic = True

    def __init__(self, model_name, index):
        if not index.name:
            raise ValueError(f"CreateIndexConcurrently needs a named index, got {index!r}.")
        super().__init__(model_name, index)

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return build(model_of(to_state, app_label, self.model_name), self.index, schema_editor)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(from_state, app_label, self.model_name))
        return [sql.drop_index_concurrently(self.index.name, table).but(label="drop concurrently")]

    def describe(self):
        return f"Create index {self.index.name} on {self.model_name} concurrently"


class DropIndexConcurrently(SafeOperation, RemoveIndex):
    """``RemoveIndex`` without the ACCESS EXCLUSIVE lock a plain DROP INDEX takes."""

    requires_non_atomic = True

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        table = table_of(model_of(from_state, app_label, self.model_name))
        return [sql.drop_index_concurrently(self.name, table).but(label="drop concurrently")]

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        model = model_of(to_state, app_label, self.model_name)
        index = to_state.models[app_label, self.model_name_lower].get_index_by_name(self.name)
        return [item.but(label="rebuild concurrently") for item in build(model, index, schema_editor)]

    def describe(self):
        return f"Drop index {self.name} from {self.model_name} concurrently"
