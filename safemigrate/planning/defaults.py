"""One value per row for fields whose default is a callable.

Django evaluates a callable default once when it adds a column, so every
existing row gets the same "unique" token. Well-known callables have an SQL
twin that PostgreSQL evaluates per row; anything else is called from Python,
row by row, in batches.
"""

import datetime
import uuid

from django.utils import timezone

SQL_EQUIVALENTS = {
    uuid.uuid4: "gen_random_uuid()",
    timezone.now: "now()",
    datetime.date.today: "CURRENT_DATE",
}


#: Callables whose value is the same every time, as JSON (``JSONField(default=dict)``).
JSON_CONSTANTS = {dict: "'{}'::jsonb", list: "'[]'::jsonb"}


def sql_for(callable_default, field=None):
    """The per-row SQL expression matching ``callable_default``, or None."""
    if field is not None and field.get_internal_type() == "JSONField" and callable_default in JSON_CONSTANTS:
        return JSON_CONSTANTS[callable_default]
    return SQL_EQUIVALENTS.get(callable_default)


def fill_with_field_default(apps, rows, app_label, model_name, field_name):
    """``RunPythonBatched`` code: give each row with NULL its own default value."""
    model = apps.get_model(app_label, model_name)
    field = model._meta.get_field(field_name)
    changed = []
    for row in rows:
        if getattr(row, field.attname) is None:
            setattr(row, field.attname, field.get_default())
            changed.append(row)
    if changed:
        # The database the rows came from (a migration may run on any alias).
        model._base_manager.using(changed[0]._state.db).bulk_update(changed, [field.name])


# Generated migration files reference this function as
# ``safemigrate.defaults.fill_with_field_default`` (MigrationWriter writes its
# ``__module__``); that old path is an alias of this module, so keep the name
# it was first written under and old and new files stay identical.
fill_with_field_default.__module__ = "safemigrate.defaults"
