"""Which rows do not fit a column definition: the rows that make a rollback (or a contract) fail.

When a step fails on data, PostgreSQL says what (``value too long for type
character varying(10)``, ``column "x" contains null values``) but not which
rows. ``rehearse`` asks here, for each column the failed step changes, which
rows would not fit the definition the step was going to (the pre-release one
for a rollback), so the report can name them. Read-only queries.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    """One rule a column's values must meet; ``kind`` is one of the keys of ``_PREDICATES``."""

    kind: str
    value: object = None

    def describe(self, column):
        if self.kind == "not_null":
            return f"{column} is NULL, and the target schema says NOT NULL"
        if self.kind == "max_length":
            return f"{column} is longer than {self.value} characters"
        if self.kind == "range":
            return f"{column} is outside {self.value[0]}..{self.value[1]}"
        if self.kind == "digits":
            return f"{column} has more than {self.value} digits before the decimal point"
        return f"{column} is not a valid {self.value}"


def _predicate(quoted, requirement):
    kind = requirement.kind
    if kind == "not_null":
        return f"{quoted} IS NULL", []
    if kind == "max_length":
        return f"char_length({quoted}::text) > %s", [requirement.value]
    if kind == "range":
        return f"{quoted} NOT BETWEEN %s AND %s", list(requirement.value)
    if kind == "digits":
        return f"abs({quoted}) >= 10::numeric ^ %s", [requirement.value]
    if kind == "type":
        return f"{quoted} IS NOT NULL AND NOT pg_input_is_valid({quoted}::text, %s)", [requirement.value]
    raise ValueError(kind)


def misfits(connection, table, key, column, requirement, limit=5):
    """``(count, [key values])`` of rows of ``table`` whose ``column`` breaks ``requirement``."""
    quote = connection.ops.quote_name
    where, params = _predicate(quote(column), requirement)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {quote(table)} WHERE {where}", params)
        count = cursor.fetchone()[0]
        if not count:
            return 0, []
        cursor.execute(f"SELECT {quote(key)} FROM {quote(table)} WHERE {where} ORDER BY 1 LIMIT %s",
                       [*params, limit])
        return count, [row[0] for row in cursor.fetchall()]


def columns_of(connection, table):
    """``{column: sql type}`` of ``table`` as it is now (empty when it does not exist)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                       "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
                       [connection.ops.quote_name(table)])
        return dict(cursor.fetchall())
