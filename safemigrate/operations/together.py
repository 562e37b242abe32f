"""``unique_together`` changed without a long lock.

Django's ``AlterUniqueTogether`` adds each new pair with ``ALTER TABLE ...
ADD CONSTRAINT ... UNIQUE``, which builds the index while holding ACCESS
EXCLUSIVE: on a table of a few million rows every read and write waits
seconds. Here the index is built CONCURRENTLY (reads and writes go on) and
attached with ``ADD CONSTRAINT ... UNIQUE USING INDEX`` (an instant catalog
change), under the name Django gives it, so a later plain migration finds
it. Removed pairs are dropped as Django drops them (instant).
"""

from django.db.migrations.operations.models import AlterUniqueTogether

from ..pg import sql
from ..pg.schema import collecting, model_of, table_of
from ..pg.steps import add_unique_via_index
from .base import SafeOperation


def _normalized(value):
    return {tuple(fields) for fields in value or ()}


class AlterUniqueTogetherConcurrently(SafeOperation, AlterUniqueTogether):
    """``AlterUniqueTogether`` whose new unique indexes are built concurrently; needs ``atomic = False``."""

    requires_non_atomic = True

    def routed_model_name(self):
        return self.name

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, from_state, to_state)

    def backwards_plan(self, app_label, schema_editor, from_state, to_state):
        return self._plan(app_label, schema_editor, from_state, to_state)

    def _plan(self, app_label, schema_editor, from_state, to_state):
        old_model, new_model = model_of(from_state, app_label, self.name), model_of(to_state, app_label, self.name)
        olds = _normalized(from_state.models[app_label, self.name_lower].options.get(self.option_name))
        news = _normalized(to_state.models[app_label, self.name_lower].options.get(self.option_name))
        plan = []
        for fields in sorted(olds - news):
            plan += self._drop(schema_editor, old_model, fields)
        table = table_of(new_model)
        for fields in sorted(news - olds):
            columns = [new_model._meta.get_field(name).column for name in fields]
            plan += add_unique_via_index(schema_editor, table, columns)
        return plan

    def _drop(self, schema_editor, model, fields):
        """Drop the pair's constraint as Django finds it (by columns, preferring its own name); re-runnable."""
        table = table_of(model)
        columns = [model._meta.get_field(name).column for name in fields]
        default = str(schema_editor._unique_constraint_name(table, columns, quote=False))
        names = [default]
        if not collecting(schema_editor):
            exclude = {c.name for c in model._meta.constraints} | {i.name for i in model._meta.indexes}
            found = schema_editor._constraint_names(model, columns, unique=True, primary_key=False, exclude=exclude)
            names = [default] if default in found else sorted(found)[:1]
        return [sql.drop_constraint(table, name).but(label=f"drop unique {name}") for name in names]

    def describe(self):
        return f"Alter unique_together for {self.name} ({len(self.option_value or '')} constraint(s)), " \
               f"new ones built concurrently"
