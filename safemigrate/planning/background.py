"""``makemigrations --safe``: write ``background=True`` on the copies of big tables.

The rule is ``BACKGROUND_MIN_ROWS`` against the table's estimated rows
(``pg_class.reltuples``) in the database ``makemigrations`` is connected to,
so the migration file says which mode runs (docs/pages/background-migrations.md).
Only expand copies are marked: a copy in a contract migration must be done
before the next contract step. A widening type change swaps at expand when
inline; with its copy in the background the swap must wait for the copy, so
it moves to the contract migration.
"""

from django.db import DatabaseError, connection

from .. import operations as safe
from ..conf import conf
from ..pg import catalog
from ..stages import Stage

#: Expand operations that copy rows, and so can run in the background.
COPIES = (safe.RenameViaCopy, safe.ChangeTypeViaCopy, safe.ChangePrimaryKeyToBigint, safe.Backfill,
          safe.RunPythonBatched)


def estimated_rows(table, cache):
    """The table's estimated rows, or None when there is no database to ask (a CI job without one)."""
    if table not in cache:
        try:
            cache[table] = max(catalog.estimated_rows(connection, table), 0)
        except (DatabaseError, RuntimeError):  # no server; RuntimeError: a test harness forbids access
            cache[table] = None
    return cache[table]


def _copies(rewrite):
    """The expand operations of ``rewrite`` that will copy rows."""
    swaps = {(op.model_name_lower, op.name_lower) for op in [*rewrite.expand, *rewrite.contract]
             if isinstance(op, safe.FinishChangeTypeViaCopy)}
    for op in rewrite.expand:
        if not isinstance(op, COPIES) or getattr(op, "background", None) is not None:
            continue
        if isinstance(op, safe.ChangeTypeViaCopy) and (op.model_name_lower, op.name_lower) not in swaps:
            continue  # changed in place: nothing is copied
        yield op


def mark_background(rewrite, table_of, cache):
    """Set ``background=True`` on ``rewrite``'s copies of tables at or above BACKGROUND_MIN_ROWS.

    ``table_of(op)`` names an operation's table. Returns ``rewrite``.
    """
    threshold = conf.background_min_rows
    if threshold is None:
        return rewrite
    for op in list(_copies(rewrite)):
        rows = estimated_rows(table_of(op), cache)
        if rows is None or rows < threshold:
            continue
        op.background = True
        if isinstance(op, safe.ChangeTypeViaCopy):
            for swap in [s for s in rewrite.expand if isinstance(s, safe.FinishChangeTypeViaCopy)
                         and (s.model_name_lower, s.name_lower) == (op.model_name_lower, op.name_lower)]:
                rewrite.expand.remove(swap)
                swap.stage = Stage.CONTRACT
                rewrite.contract.insert(0, swap)
                # Not "read it as the new type" any more: the swap waits for the copy.
                rewrite.notes[:] = [note for note in rewrite.notes
                                    if not note.startswith(f"read {op.model_name}.{op.name} as ")]
                rewrite.notes.append(f"write {op.model_name}.{op.name} with its old type until the background "
                                     f"copy is done and the contract swaps the new column in")
    return rewrite
