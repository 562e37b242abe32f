"""Short index builds of a rehearsal timed again, so one slow run is not multiplied into the prediction.

An index build on a 1 % sample takes a tenth of a second, and the estimate
multiplies it by about a hundred (``planning.estimates``: n·log n for the
sort, linear for the scans). A run that happens to be 30 ms slow (a cold
first scan, the lock sampler polling beside it, a checkpoint) becomes three
seconds of a ten-second prediction.

So once the release has run (and the meter has stopped: these builds are not
part of it), every index the rehearsal built on a sampled table that still
exists and took less than ``REPEAT_BELOW_S`` is built twice more on the
scratch copy, the same way (``CONCURRENTLY`` when the release built it so),
under a temporary name, then dropped. The estimate scales the build's work
by the fastest of the three times over its own (``estimates.index_build``):
on a build this short noise only adds, so the fastest run is the closest to
the work. Measured at 10M rows from a 1 % sample (benchmarks/README.md):
scaled at its own build, five rehearsals over-predicted by a median of
+22 % (worst +37 %); at the fastest of three, median 0 %, worst +18 %; the
median of three, tried first, let two slow runs in a row through (+56 %).
A longer build is not repeated: its noise is a smaller share of it, and
repeating it would double the rehearsals that already take longest.
"""

import re
import time

from ..pg import sql
from ..pg.classify import IDENT, unquote
from ..pg.index_copy import copy_definition

#: Builds measured at or over this are timed once (see the module docstring).
REPEAT_BELOW_S = 10.0
REPEATS = 2

_CREATE = re.compile(rf"CREATE (?:UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?({IDENT})", re.I)
_CONSTRAINT = re.compile(rf"ADD CONSTRAINT ({IDENT}) (?:UNIQUE|PRIMARY KEY)\b", re.I)


def built_index(record):
    """The name of the index ``record`` (a ``pg.measure.StatementRecord``) built, or None."""
    declared = getattr(record.statement, "index", None) if record.statement is not None else None
    if declared:
        return declared
    match = _CREATE.match(record.sql) or _CONSTRAINT.search(record.sql)
    return unquote(match.group(1)) if match else None


def _definition(cursor, index):
    """``(pg_get_indexdef, table)`` of a valid index on a table of the current schema, else None."""
    cursor.execute("SELECT pg_get_indexdef(i.indexrelid), t.relname FROM pg_index i "
                   "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                   "WHERE i.indexrelid = to_regclass(%s) AND i.indisvalid AND n.nspname = current_schema()",
                   [sql.q(index)])
    return cursor.fetchone()


def _build_once(cursor, definition, table, concurrent, name):
    text = copy_definition(definition, name, table, {}, concurrently=concurrent)
    started = time.monotonic()
    try:
        cursor.execute(text)
        return time.monotonic() - started
    finally:
        cursor.execute(sql.drop_index(name, table).sql)


def time_again(connection, steps, *, tables=None, below=REPEAT_BELOW_S, repeats=REPEATS):
    """Give each short index build of ``steps`` its ``repeats`` (wall seconds of the same build, run again).

    ``connection``: the scratch database's Django connection, in autocommit
    (``CONCURRENTLY`` cannot run in a transaction). Returns the number of
    indexes rebuilt. An index that no longer exists (the release dropped it)
    or is not on a table of the current schema is left as measured.
    ``tables``: only builds on these (the sampled ones: a build on a full
    copy is not multiplied, so its noise stays its own); None for all.
    """
    candidates = {}
    for step in steps:
        for record in step.statements.values():
            if record.container or record.error or not record.count or record.seconds / record.count >= below:
                continue
            if tables is not None and record.table not in tables:
                continue
            index = built_index(record)
            if index:
                candidates.setdefault(index, []).append(record)
    timed = 0
    with connection.cursor() as cursor:
        for number, (index, records) in enumerate(sorted(candidates.items())):
            found = _definition(cursor, index)
            if found is None:
                continue
            definition, table = found
            by_method = {}
            for record in records:
                concurrent = "CONCURRENTLY" in record.sql.upper() or bool(getattr(record.statement, "index", None))
                if concurrent not in by_method:
                    name = f"_safemigrate_rehearse_repeat_{number}"
                    by_method[concurrent] = [_build_once(cursor, definition, table, concurrent, name)
                                             for _ in range(repeats)]
                record.repeats = list(by_method[concurrent])
            timed += 1
    return timed
