"""Lock-friendly equivalents of the SQL plain Django operations generate.

Django's schema editor builds indexes with plain ``CREATE INDEX`` (writes
wait for the whole build), adds unique constraints by building their index
under ACCESS EXCLUSIVE, and adds foreign keys and CHECKs by validating every
row while holding the lock. PostgreSQL has an equivalent for each that ends
in the same schema without the long lock:

- ``CREATE [UNIQUE] INDEX`` -> ``CREATE [UNIQUE] INDEX CONCURRENTLY``;
- ``ADD CONSTRAINT n UNIQUE (cols)`` and a column's inline ``UNIQUE`` ->
  a unique index built concurrently, then ``ADD CONSTRAINT n UNIQUE USING
  INDEX n`` (an instant catalog change);
- ``ADD CONSTRAINT n FOREIGN KEY ...`` / ``CHECK (...)`` and a column's inline
  ``REFERENCES`` -> the same constraint ``NOT VALID`` (instant), then
  ``VALIDATE CONSTRAINT`` (SHARE UPDATE EXCLUSIVE: reads and writes go on).

Each equivalent needs its steps to commit separately, so it is only possible
outside a transaction: in a non-atomic migration. (In an atomic one, the
index builds move before the transaction instead: ``safemigrate.pg.prebuild``.)
Every step can run again after a kill: a step adding a constraint names it
(``Step.constraint``) and is skipped when the constraint exists. ``plan`` returns the steps,
or None when the statement is not one of Django's known shapes (it then runs
unchanged, lock-bounded). Only Django's own SQL templates are recognised:
raw SQL that happens to look alike is rewritten the same way, which keeps its
meaning.
"""

import re
from dataclasses import dataclass

from .classify import IDENT, QUALIFIED, normalize, table_name, unquote

#: A step that takes a table lock briefly: run with lock_timeout, retried.
BOUNDED = "bounded"
#: A step that only takes SHARE UPDATE EXCLUSIVE: run outside a transaction, no timeout.
CONCURRENT = "concurrent"


@dataclass(frozen=True)
class Step:
    sql: str
    params: object = None
    kind: str = BOUNDED
    #: Name of the index a concurrent build creates (dropped again if the build fails).
    index: "str | None" = None
    #: ``(table, name)`` of the constraint this step adds: skipped when it exists (a re-run after a kill).
    constraint: "tuple | None" = None


_CREATE_INDEX = re.compile(rf"^CREATE (UNIQUE )?INDEX (?!CONCURRENTLY)(?:IF NOT EXISTS )?({IDENT}) (ON .*)$",
                           re.I | re.S)
_ADD_UNIQUE = re.compile(rf"^ALTER TABLE ({QUALIFIED}) ADD CONSTRAINT ({IDENT}) UNIQUE( NULLS NOT DISTINCT)? "
                         rf"?\((.*)\)( DEFERRABLE INITIALLY (?:DEFERRED|IMMEDIATE))?$", re.I | re.S)
_ADD_FK_OR_CHECK = re.compile(rf"^ALTER TABLE ({QUALIFIED}) ADD CONSTRAINT ({IDENT}) (FOREIGN KEY|CHECK)\b(.*)$",
                              re.I | re.S)
_INLINE_FK = re.compile(
    rf"^(ALTER TABLE ({QUALIFIED}) ADD COLUMN ({IDENT}) .*?) CONSTRAINT ({IDENT}) REFERENCES ({QUALIFIED}) ?"
    rf"\(({IDENT})\)( DEFERRABLE INITIALLY DEFERRED)?; SET CONSTRAINTS {QUALIFIED} IMMEDIATE$",
    re.I | re.S,
)
_INLINE_UNIQUE = re.compile(rf"^(ALTER TABLE ({QUALIFIED}) ADD COLUMN ({IDENT}) .*?) UNIQUE$", re.I | re.S)


def plan(sql, params=None, *, unique_name):
    """The safe steps for ``sql``, or None when it has no rewrite.

    ``unique_name(table, column)`` names the unique index/constraint that
    replaces a column's inline ``UNIQUE`` (Django's naming, so later
    operations find it like any unique constraint on that column).
    """
    text = normalize(sql)
    if not text or "NOT VALID" in text.upper() or " CONCURRENTLY" in text.upper():
        return None
    match = _INLINE_FK.match(text)
    if match:
        head, table, column, name, target, target_column, deferrable = match.groups()
        head_steps = plan(head, params, unique_name=unique_name) or [Step(head, params)]
        return head_steps + [
            Step(f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({column}) "
                 f"REFERENCES {target} ({target_column}){deferrable or ''} NOT VALID",
                 constraint=(table_name(table), unquote(name))),
            Step(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}", kind=CONCURRENT),
        ]
    match = _INLINE_UNIQUE.match(text)
    if match and "CONSTRAINT" not in match.group(1).upper().split("ADD COLUMN", 1)[1]:
        head, table, column = match.groups()
        name = unique_name(table_name(table), unquote(column))
        return [Step(head, params)] + _unique_steps(table, f'"{name}"', column, "")
    if params:
        return None  # the remaining shapes never carry parameters in Django's SQL
    match = _CREATE_INDEX.match(text)
    if match:
        unique, name, rest = match.groups()
        return [Step(f"CREATE {unique or ''}INDEX CONCURRENTLY {name} {rest}", kind=CONCURRENT,
                     index=unquote(name))]
    match = _ADD_UNIQUE.match(text)
    if match:
        table, name, nulls, columns, deferrable = match.groups()
        return _unique_steps(table, name, columns, nulls or "", deferrable or "")
    match = _ADD_FK_OR_CHECK.match(text)
    if match:
        table, name, _kind, _rest = match.groups()
        return [Step(f"{text} NOT VALID", constraint=(table_name(table), unquote(name))),
                Step(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}", kind=CONCURRENT)]
    return None


def _unique_steps(table, name, columns, nulls, deferrable=""):
    return [
        Step(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {table} ({columns}){nulls}", kind=CONCURRENT,
             index=unquote(name)),
        Step(f"ALTER TABLE {table} ADD CONSTRAINT {name} UNIQUE USING INDEX {name}{deferrable}",
             constraint=(table_name(table), unquote(name))),
    ]
