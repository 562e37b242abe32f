"""The contract gate for background copies: a step that needs a filled column waits for its copy.

A contract step that drops the source of a copy (``FinishRenameViaCopy``),
swaps its target in (``FinishChangeTypeViaCopy``,
``FinishChangePrimaryKeyToBigint``) or constrains the column it fills
(``SetNotNull`` after a ``Backfill``) would lose data or fail half-way while
the copy is unfinished. So before it acts it asks here. An unfinished copy
that is still making progress is finished inline, within
``BACKGROUND_FINALIZE_INLINE_S`` seconds (GitLab's
``ensure_batched_background_migration_is_finished`` does the same); a copy
that cannot finish in that time, or that is paused, failed or cancelled,
makes the step refuse with its name, its progress, its ETA and the command
that finishes it. A copy that passes is marked ``finalized``.
"""

from ..conf import conf
from ..exceptions import BackgroundMigrationUnfinished
from . import background_state as bg


def refusal(what, rows, budget_s=None):
    """The message of a step refused because of ``rows`` (also used by ``backfills finalize``)."""
    parts = []
    for row in rows:
        how = {
            bg.PAUSED: f"it is paused: `python manage.py backfills resume {row.name}`, then finish it",
            bg.FAILED: f"it failed ({(row.error or '').splitlines()[0] if row.error else 'see its status'}): fix the "
                       f"cause, `python manage.py backfills retry {row.name}`, then finish it",
            bg.CANCELLED: f"it was cancelled: `python manage.py backfills retry {row.name}` queues it again",
        }.get(row.state, "it is still copying")
        parts.append(f"background migration {row.name!r} ({row.state}; {bg.describe_progress(row)}) fills "
                     f"{row.table_name}.{', '.join(row.columns) or '?'}: {how}")
    names = " ".join(row.name for row in rows)
    budget = (f" It was given {budget_s:g} s to finish inline and did not." if budget_s else "")
    return (f"{what}: refused, " + "; ".join(parts) + f".{budget} Running this step now would drop or "
            f"constrain a column before every row is copied into it: values would be lost or the step would "
            f"fail half-way. Finish the copy first: `python manage.py backfills finalize {names} "
            f"--max-inline-seconds S` runs the rest inline (or let `python manage.py backfills run` finish it), "
            f"then run migrate_contract again.")


def require_finished(what, connection, *, name=None, table=None, columns=None, budget_s=None):
    """Return when every copy ``what`` depends on is finished; else finish it inline within the budget or raise.

    Depends on: the copy called ``name``, or the unfinished copies filling
    ``columns`` of ``table``. Rows that pass are marked finalized.
    """
    if not bg.tables_exist(connection):
        return
    if name is not None:
        row = bg.find(connection, name)
        rows = [row] if row is not None else []
    else:
        rows = bg.unfinished_filling(connection, table, columns, states=(*bg.UNFINISHED, bg.FINISHED))
    if not rows:
        return
    budget_s = conf.background_finalize_inline_s if budget_s is None else budget_s
    blocked = []
    for row in rows:
        if row.state not in bg.DONE and row.state in (bg.QUEUED, bg.RUNNING, bg.ON_HOLD) and budget_s > 0:
            from .background_runner import finalize_inline

            row = finalize_inline(connection, row.name, budget_s)
        if row.state not in bg.DONE:
            blocked.append(row)
    if blocked:
        raise BackgroundMigrationUnfinished(refusal(what, blocked, budget_s), names=[r.name for r in blocked])
    for row in rows:
        bg.mark_finalized(connection, row.name, reason=f"needed by {what}")
