"""What the linter knows about partitioned tables, once it can see the database.

Migration files do not say that a table is partitioned: the table was made with
``RunSQL`` or by another package. With ``--table-sizes`` or ``--unapplied``
``lint_migrations`` reads the database anyway, and then it also knows which tables
are partitioned (``pg.partitions.partitioned_tables``). On those, some operations
that are safe elsewhere fail outright, and a unique constraint must contain the
partition key (rule SAFE143); the findings that recommend safemigrate's operations
say how those work partition by partition.
"""

from dataclasses import replace

import re

from django.db import migrations

from ..pg.classify import QUALIFIED, normalize, table_name
from .findings import Finding
from .rules import table_of

_CONCURRENT_INDEX = re.compile(rf"^CREATE (?:UNIQUE )?INDEX CONCURRENTLY (?:IF NOT EXISTS )?(?:\S+ )?ON "
                               rf"(?!ONLY )({QUALIFIED})", re.I)

DOCS = "docs/pages/partitioned-tables.md"


def _unique_columns(operation, state, app_label):
    """Columns of a unique constraint an operation adds (field names mapped to columns), or None."""
    model = state.models.get((app_label, getattr(operation, "model_name", "") or "")) if state else None
    constraint = getattr(operation, "constraint", None)
    names = None
    if constraint is not None and type(constraint).__name__ == "UniqueConstraint" and constraint.fields:
        names = list(constraint.fields)
    field = getattr(operation, "field", None)
    if field is not None and getattr(field, "unique", False) and not field.primary_key:
        names = [operation.name]
    if names is None or model is None:
        return names
    columns = []
    for name in names:
        try:
            found = model.get_field(name)
            columns.append(found.db_column or (f"{name}_id" if found.is_relation else name))
        except (KeyError, LookupError):
            columns.append(name)
    return columns


def _raw_sql_findings(operation, partitioned):
    sqls = operation.sql if isinstance(operation.sql, (list, tuple)) else [operation.sql]
    found = []
    for sql in sqls:
        text = sql[0] if isinstance(sql, (list, tuple)) else sql
        for statement in str(text).split(";"):
            match = _CONCURRENT_INDEX.match(normalize(statement))
            table = table_name(match.group(1)) if match else None
            if table in partitioned:
                found.append(Finding(
                    "SAFE143", f"RunSQL: {normalize(statement)[:80]}",
                    f"{table} is {partitioned[table]['description']}: PostgreSQL refuses CREATE INDEX "
                    f"CONCURRENTLY on a partitioned table, so the migration fails.",
                    f"build it in the steps PostgreSQL allows: CREATE INDEX ... ON ONLY {table} (instant, "
                    f"INVALID), CREATE INDEX CONCURRENTLY on each partition, ALTER INDEX ... ATTACH PARTITION for "
                    f"each; or CreateIndexConcurrently, which does exactly that ({DOCS}).", "none: PostgreSQL refuses the statement", table=table))
    return found


def findings(operation, state, app_label, partitioned, pg_version=None):
    """Findings for ``operation`` that exist only because its table is partitioned."""
    if isinstance(operation, migrations.RunSQL):
        return _raw_sql_findings(operation, partitioned)
    model_name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
    table = table_of(state, app_label, model_name) if isinstance(model_name, str) else None
    info = partitioned.get(table)
    if info is None:
        return []
    kind = type(operation).__name__
    about = f"{table} is {info['description']}"
    found = []
    if kind == "AddIndexConcurrently":
        found.append(("PostgreSQL refuses CREATE INDEX CONCURRENTLY on a partitioned table: the migration fails",
                      "CreateIndexConcurrently, which builds the index ON ONLY the parent, concurrently on each "
                      "partition, and attaches them"))
    elif kind == "RemoveIndexConcurrently":
        found.append(("PostgreSQL refuses DROP INDEX CONCURRENTLY on a partitioned index: the migration fails",
                      "DropIndexConcurrently (a plain, instant DROP INDEX under lock_timeout on a partitioned "
                      "index)"))
    elif kind == "AddConstraintNotValid" and "FOREIGN KEY" in str(getattr(operation, "constraint", "")).upper():
        if pg_version is None or pg_version < 180000:
            found.append(("PostgreSQL before 18 refuses NOT VALID foreign keys on a partitioned table",
                          "AddForeignKey (or a plain AddField in a non-atomic migration): NOT VALID and VALIDATE "
                          "per partition, then attached on the parent"))
    elif kind == "ChangePrimaryKeyToBigint":
        found.append(("the key swap re-creates the primary key USING INDEX, which PostgreSQL refuses on a "
                      "partitioned table: it stops before changing anything",
                      "a new partitioned table with a bigint key, filled partition by partition (see the "
                      "operation's error message)"))
    columns = _unique_columns(operation, state, app_label)
    if columns is not None:
        missing = [key for key in info["keys"] if key is None or key not in columns]
        if missing:
            found.append((f"a unique constraint on ({', '.join(columns)}) lacks partition key column(s) "
                          f"{', '.join(k or '(expression)' for k in missing)}; PostgreSQL refuses it",
                          "include the partition key in the constraint, or enforce uniqueness per partition "
                          "with a unique index on each partition"))
    return [Finding("SAFE143", operation.describe(), f"{about}: {problem}.", f"{fix} ({DOCS}).",
                    "none: PostgreSQL refuses the statement", table=table) for problem, fix in found]


#: Findings whose safe alternative works partition by partition on a partitioned table.
PER_PARTITION = {"SAFE107", "SAFE108", "SAFE111", "SAFE112", "SAFE114", "SAFE115", "SAFE116", "SAFE131",
                 "SAFE132"}


def adjust(finding, partitioned):
    """An existing finding on a partitioned table, its alternative saying how it works there."""
    info = partitioned.get(finding.table)
    if info is None or finding.code not in PER_PARTITION:
        return finding
    return replace(finding, problem=f"{finding.problem} {finding.table} is {info['description']}: the lock is on "
                                    f"the parent and every partition for the whole time.",
                   fix=f"{finding.fix} On a partitioned table safemigrate does it partition by partition "
                       f"({DOCS}).")

