"""``order_with_respect_to`` set or unset while the old code still writes the table.

Django's ``AlterOrderWithRespectTo`` adds the ``_order`` column (NOT NULL,
existing rows 0) and drops its default at once, so the old code's INSERTs,
which know nothing of ``_order``, fail; unsetting it drops the column the old
code still selects and inserts. ``AlterOrderWithRespectToSafely`` keeps the
column's default 0 until contract (``DropColumnDefault``) when it is added,
and when it goes, only lets the new code's INSERTs omit it (DROP NOT NULL)
until contract drops it (``DropColumn``).
"""

from django.db.migrations.operations.models import AlterOrderWithRespectTo

from ..pg.schema import model_of, table_of
from ..pg.steps import drop_not_null
from .base import SafeOperation
from .columns import new_column_plan


class AlterOrderWithRespectToSafely(SafeOperation, AlterOrderWithRespectTo):
    """``AlterOrderWithRespectTo`` whose ``_order`` column comes and goes in two stages."""

    def routed_model_name(self):
        return self.name

    def _switch(self, app_label, schema_editor, from_state, to_state):
        from_model, to_model = model_of(from_state, app_label, self.name), model_of(to_state, app_label, self.name)
        if to_model._meta.order_with_respect_to and not from_model._meta.order_with_respect_to:
            field = to_model._meta.get_field("_order")
            if not field.has_default():
                field.default = 0  # as Django: the existing rows (and, until contract, the old code's) get 0
            return new_column_plan(schema_editor, to_model, field)
        if from_model._meta.order_with_respect_to and not to_model._meta.order_with_respect_to:
            return drop_not_null(schema_editor, table_of(from_model), from_model._meta.get_field("_order").column,
                                 label="let the new code omit _order")
        return []

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._switch(app_label, schema_editor, from_state, to_state)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._switch(app_label, schema_editor, from_state, to_state)

    def describe(self):
        what = f"to {self.order_with_respect_to}" if self.order_with_respect_to else "off"
        return f"Set order_with_respect_to on {self.name} {what}; the _order column changes in two stages"
