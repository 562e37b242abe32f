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


#: Callables whose value is the same every time, by the column kind that stores it
#: (``JSONField(default=dict)``, ``ArrayField(default=list)``, ``HStoreField(default=dict)``): the empty
#: value in SQL. Without it the rows the old code inserts during the rollout would stay NULL.
EMPTY_CONSTANTS = {
    ("JSONField", dict): "'{}'::jsonb",
    ("JSONField", list): "'[]'::jsonb",
    ("ArrayField", list): "'{}'",
    ("HStoreField", dict): "''",
}


def sql_for(callable_default, field=None):
    """The per-row SQL expression matching ``callable_default``, or None."""
    if field is not None:
        empty = EMPTY_CONSTANTS.get((field.get_internal_type(), callable_default))
        if empty:
            return empty
    return SQL_EQUIVALENTS.get(callable_default)
