"""Catalog conditions that make a statement a no-op on a re-run, as data.

A migration killed halfway is run again, so every statement safemigrate
declares says when it is already done: ``skip_if=ColumnExists(table,
column)`` on an ``ADD COLUMN``, ``IndexValid(name)`` on an index build, and
so on. The runner asks the catalog right before the statement would run.
Being data rather than lambdas, a condition can also be printed: ``--plan
--annotate`` and the plan JSON show what each re-run check looks at.
"""

from dataclasses import dataclass

from . import catalog


class Check:
    """A condition on the catalog; ``holds(connection)`` asks it."""

    def holds(self, connection):
        raise NotImplementedError

    def __invert__(self):
        return Not(self)

    def __or__(self, other):
        return AnyOf((self, other))

    def __and__(self, other):
        return AllOf((self, other))


@dataclass(frozen=True)
class ColumnExists(Check):
    table: str
    column: str

    def holds(self, connection):
        return catalog.column_exists(connection, self.table, self.column)

    def __str__(self):
        return f"column {self.table}.{self.column} exists"


@dataclass(frozen=True)
class ColumnNotNull(Check):
    """The column exists and is NOT NULL."""

    table: str
    column: str

    def holds(self, connection):
        info = catalog.column_info(connection, self.table, self.column)
        return info is not None and not info["nullable"]

    def __str__(self):
        return f"column {self.table}.{self.column} is NOT NULL"


@dataclass(frozen=True)
class ColumnNullableOrDefaulted(Check):
    """Missing, nullable, or (``defaulted``) with a database default: an INSERT omitting it succeeds."""

    table: str
    column: str
    defaulted: bool = False

    def holds(self, connection):
        info = catalog.column_info(connection, self.table, self.column)
        return info is None or info["nullable"] or (self.defaulted and info["default"] is not None)

    def __str__(self):
        extra = " or has a database default" if self.defaulted else ""
        return f"column {self.table}.{self.column} is nullable{extra}"


@dataclass(frozen=True)
class IndexExists(Check):
    """``name`` is a bare index name, or SQL text (``"schema"."index"``, as ``sql.qualified`` writes it)."""

    name: str

    def holds(self, connection):
        if self.name.startswith('"'):  # SQL text: PostgreSQL resolves it, schema and quoting included
            return catalog.relation_exists(connection, self.name)
        return catalog.index_state(connection, self.name) is not None

    def __str__(self):
        return f"index {self.name} exists"


@dataclass(frozen=True)
class IndexValid(Check):
    name: str

    def holds(self, connection):
        state = catalog.index_state(connection, self.name)
        return state is not None and state["valid"]

    def __str__(self):
        return f"index {self.name} exists and is valid"


@dataclass(frozen=True)
class ConstraintExists(Check):
    table: str
    name: str

    def holds(self, connection):
        return catalog.constraint_state(connection, self.table, self.name) is not None

    def __str__(self):
        return f"constraint {self.name} on {self.table} exists"


@dataclass(frozen=True)
class ConstraintValidated(Check):
    table: str
    name: str

    def holds(self, connection):
        state = catalog.constraint_state(connection, self.table, self.name)
        return state is not None and state["validated"]

    def __str__(self):
        return f"constraint {self.name} on {self.table} is validated"


@dataclass(frozen=True)
class ForeignKeyDeletes(Check):
    """The foreign key exists and its ON DELETE is ``action`` (``pg_constraint.confdeltype``: a, r, c, n, d)."""

    table: str
    name: str
    action: str

    def holds(self, connection):
        state = catalog.constraint_state(connection, self.table, self.name)
        return state is not None and state["on_delete"] == self.action

    def __str__(self):
        return f"foreign key {self.name} on {self.table} has ON DELETE {catalog.ON_DELETE[self.action]}"


@dataclass(frozen=True)
class TriggerExists(Check):
    table: str
    name: str

    def holds(self, connection):
        return catalog.trigger_exists(connection, self.table, self.name)

    def __str__(self):
        return f"trigger {self.name} on {self.table} exists"


@dataclass(frozen=True)
class TableExists(Check):
    """A relation of that name exists (a table or a view)."""

    name: str

    def holds(self, connection):
        return catalog.table_exists(connection, self.name)

    def __str__(self):
        return f"relation {self.name} exists"


@dataclass(frozen=True)
class ViewExists(Check):
    name: str

    def holds(self, connection):
        return catalog.view_exists(connection, self.name)

    def __str__(self):
        return f"view {self.name} exists"


@dataclass(frozen=True)
class WindowShows(Check):
    """A rename window is open on ``view`` and shows base column ``column`` also as ``alias``."""

    view: str
    alias: str
    column: str

    def holds(self, connection):
        window = catalog.rename_window(connection, self.view)
        return window is not None and (self.alias, self.column) in window.aliases and catalog.column_exists(
            connection, self.view, self.column)

    def __str__(self):
        return f"rename window on {self.view} shows {self.column} also as {self.alias}"


@dataclass(frozen=True)
class Not(Check):
    check: Check

    def holds(self, connection):
        return not self.check.holds(connection)

    def __str__(self):
        return f"not ({self.check})"


@dataclass(frozen=True)
class AnyOf(Check):
    checks: tuple

    def holds(self, connection):
        return any(check.holds(connection) for check in self.checks)

    def __str__(self):
        return " or ".join(f"({check})" for check in self.checks)


@dataclass(frozen=True)
class AllOf(Check):
    checks: tuple

    def holds(self, connection):
        return all(check.holds(connection) for check in self.checks)

    def __str__(self):
        return " and ".join(f"({check})" for check in self.checks)
