"""A rename window as data: its names, its marker, and the view it needs.

A column rename through a view changes no row. The table steps aside to a
private name, its column takes the new name, and a view under the table's
name shows every column plus the renamed one a second time under its old
name. A view over one table that selects plain columns is *automatically
updatable* in PostgreSQL, so INSERT (with RETURNING and ON CONFLICT),
UPDATE, DELETE and SELECT ... FOR UPDATE of the old code (which writes the
old name) and of the new code (the new name) all reach the same column.

Why the column is renamed at expand, not at contract: every later
statement Django writes for the model (an added field, an index, a type
change) names the columns by their new names, so with the base table
already in its final shape such a statement only needs its *table* pointed
at the base table (``safemigrate.pg.windows``), never its columns.

What PostgreSQL gives for free, so nothing recreates it: a column the
INSERT leaves out, or sets to DEFAULT, takes the base table's default
(identity and serial keys included) when the view's own column has none;
foreign keys, indexes, constraints, triggers and sequences stay on the
base table (they follow its oid, not its name). What a view does not
inherit (owner, privileges, ``security_invoker``, column comments) is
copied by the builders in ``pg.sql``.

The view's comment marks it as a window and records which alias stands
for which column (``marker``), so a window is a fact of the database that
any process finds with one catalog query (``pg.catalog.rename_window``).
Nothing here reads the database or writes SQL.
"""

import hashlib
import json
from dataclasses import dataclass, field

#: The view's comment starts with this; the rest is JSON (see ``marker``).
MARKER_PREFIX = "safemigrate rename window "

#: The base table's name is the table's name plus this (hashed when too long).
BASE_SUFFIX = "__sm_base"

#: PostgreSQL's identifier length limit (NAMEDATALEN - 1).
MAX_NAME = 63


@dataclass
class Window:
    """An open rename window: ``view`` is the model's table name, ``base`` holds the rows."""

    view: str
    base: str
    #: ``(alias, column)``: the view shows base column ``column`` also as ``alias``.
    aliases: list = field(default_factory=list)

    def alias_of(self, column):
        return [alias for alias, target in self.aliases if target == column]

    def describe(self):
        shown = ", ".join(f"{alias} -> {column}" for alias, column in self.aliases) or "none"
        return f"{self.view} is a view over {self.base} (old names kept: {shown})"


def base_name(table):
    """The private name of ``table`` while a rename window is open on it.

    Deterministic, so a re-run finds what a killed run made; shortened with
    a hash of the full name when the table's name is already long.
    """
    name = f"{table}{BASE_SUFFIX}"
    if len(name.encode()) <= MAX_NAME:
        return name
    digest = hashlib.md5(table.encode()).hexdigest()[:8]
    keep = MAX_NAME - len(BASE_SUFFIX) - len(digest) - 1
    return f"{table.encode()[:keep].decode(errors='ignore')}_{digest}{BASE_SUFFIX}"


def marker(base, aliases):
    """The view's comment: ``MARKER_PREFIX`` + JSON of the base table and the aliases.

    ``aliases`` is a list of ``[alias, column]`` pairs: the view shows base
    column ``column`` a second time as ``alias``. An alias whose column is
    gone (dropped for a type swap, say) stays listed and shows again when a
    column of that name comes back.
    """
    return MARKER_PREFIX + json.dumps({"version": 1, "base": base, "aliases": [list(a) for a in aliases]})


def parse_marker(comment):
    """``(base, aliases)`` from a view comment, or None when it is not a window's marker."""
    if not comment or not comment.startswith(MARKER_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARKER_PREFIX):])
        return data["base"], [tuple(pair) for pair in data["aliases"]]
    except (ValueError, KeyError, TypeError):
        return None


def visible_aliases(columns, aliases):
    """The aliases the view can show: their column exists and their name is not a column's."""
    present = set(columns)
    shown, seen = [], set()
    for alias, column in aliases:
        if column in present and alias not in present and alias not in seen:
            shown.append((alias, column))
            seen.add(alias)
    return shown
