"""Dual-write triggers that keep two columns in step during a rollout.

The SQL is compiled by django-pgtrigger (``pgtrigger.compiler.UpsertTriggerSql``,
which also wires in pgtrigger's ``ignore()`` support). The trigger bodies
are versioned here (``BODIES``) and the operations record the version they
use in the migration file (``trigger_version=``, absent meaning 1), so a later safemigrate
release with a new body never changes what an old migration installs. The
surrounding template belongs to pgtrigger; a pgtrigger upgrade could change
its wrapper, never the copy logic. Triggers are named ``safemigrate_...`` rather
than ``pgtrigger_...`` so that ``manage.py pgtrigger prune`` (which removes
triggers no model declares) leaves them alone; pgtrigger's ``ignore()``
context still works on them, through pgtrigger's ``_pgtrigger_should_ignore``
function. That function lives in the schema pgtrigger's ``PGTRIGGER_SCHEMA``
setting names (``"public"`` by default), read through pgtrigger's own
``features.schema()``: pgtrigger's SQL template hard-codes ``"public"``, and
a migrating role without CREATE on ``public`` could not install it there.

Why BEFORE ROW triggers: they run before NOT NULL is checked, so a row the
old code inserts without the new column is completed in time, and they cost
one function call per written row, no extra statement.
"""

import hashlib

from pgtrigger import features as pgtrigger_features
from pgtrigger.compiler import DropTriggerSql, UpsertTriggerSql

IGNORE_FUNCTION = "_pgtrigger_should_ignore"

# The trigger bodies, by version. Never edit a version in place: add a new one,
# make new operations use it (VERSION), and leave the old ones here for the
# migration files that name them. 0.1 has one.
#
# Rename: whichever side a statement writes wins; the new name wins a tie.
# "Did this statement write the column" compares the text forms, so columns
# whose type has no equality operator (json, xml, point) work too.
# Cast: the column in use is the source, the shadow a cast copy. The type is
# passed without its length limit (``copy_steps.cast_type``), so assigning a
# value that is too long to the shadow fails instead of a cast cutting it.
BODIES = {
    1: {
        "rename": """
            IF TG_OP = 'INSERT' THEN
                IF NEW.{new} IS NOT NULL THEN
                    NEW.{old} := NEW.{new};
                ELSE
                    NEW.{new} := NEW.{old};
                END IF;
            ELSIF NEW.{new}::text IS DISTINCT FROM OLD.{new}::text THEN
                NEW.{old} := NEW.{new};
            ELSIF NEW.{old}::text IS DISTINCT FROM OLD.{old}::text THEN
                NEW.{new} := NEW.{old};
            END IF;
            RETURN NEW;
        """,
        "cast": """
            NEW.{new} := CAST(NEW.{old} AS {new_type});
            RETURN NEW;
        """,
    },
}
VERSION = 1


# PostgreSQL fires the BEFORE triggers of one event in the order of their
# names. A cast trigger may read a column a rename trigger fills (a renamed
# foreign key to a primary key being widened: the rename copies the old code's
# value into the new column, the cast copies that into its bigint shadow), so
# cast triggers are named to sort after rename triggers.
NAME_PREFIX = {"rename": "safemigrate_rename_", "cast": "safemigrate_shadow_"}


def _digest(table, kind, old, new):
    return hashlib.sha1(f"{table}:{kind}:{old}:{new}".encode()).hexdigest()[:10]


def trigger_id(table, kind, old, new):
    return f"{NAME_PREFIX[kind]}{_digest(table, kind, old, new)}"


def ignore_function_name(quote_name):
    """pgtrigger's ignore function, qualified as pgtrigger qualifies it (``PGTRIGGER_SCHEMA``)."""
    schema = pgtrigger_features.schema()
    return f"{quote_name(schema)}.{IGNORE_FUNCTION}" if schema else IGNORE_FUNCTION


def upsert_sql(quote_name, table, kind, old, new, new_type=None, version=VERSION):
    """``(trigger id, install SQL)`` of the BEFORE INSERT OR UPDATE trigger."""
    pgid = trigger_id(table, kind, old, new)
    body = BODIES[version][kind].format(old=quote_name(old), new=quote_name(new), new_type=new_type)
    sql = UpsertTriggerSql(
        pgid=pgid,
        func=body,
        table=table,
        when="BEFORE",
        operation="INSERT OR UPDATE",
        ignore_func_name=ignore_function_name(quote_name),
    )
    return pgid, str(sql)


def drop_trigger_sql(table, pgid):
    """pgtrigger's ``DROP TRIGGER IF EXISTS`` for trigger ``pgid`` on ``table`` (its function is dropped apart)."""
    return str(DropTriggerSql(pgid=pgid, table=table))
