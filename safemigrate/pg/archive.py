"""Contract keeps what it drops: the hooks the contract operations call.

Every contract step that would drop data (``DropColumn``, ``DropTable``, the
old column of ``FinishRenameViaCopy`` and ``FinishChangeTypeViaCopy``, the
integer columns ``FinishChangePrimaryKeyToBigint`` swaps out) asks this
module for its statements instead of writing ``DROP``. Unless
``SAFEMIGRATE["ARCHIVE"]`` is False for the app, what comes back archives:

- a column is renamed to ``_archived_<migration>_<column>`` after its
  constraints, default, NOT NULL and dual-write triggers are dropped and
  its plain indexes renamed aside (``finish_pending`` drops those
  CONCURRENTLY: dropping them under the lock would unlink their files while
  traffic waits): the values stay where they are, no write pays for them, and no
  code can trip over them (the models do not name the column; its name
  is free for a new field). In ``"copy"`` mode the values are then copied
  ``(pk, value)`` into a table of the archive schema in batches, and the
  column is dropped;
- a table has its foreign keys dropped (recorded) and moves, renamed, into
  ``ARCHIVE_SCHEMA`` (``SET SCHEMA``: catalog only, no data page touched).

Both are a few catalog changes, declared statements (``pg.sql``) that the
operation puts into the ``Transaction`` of its plan that used to drop,
together with the manifest row's INSERT: the runner runs them in one short,
lock-bounded transaction, so the archive and its record commit or vanish
together. The checksum (a full read) and the copy come after, in
``finish_pending``.

The reverse hooks are plan items (``Call``) of the operations' backwards
plans, making the contract reversible where the archive allows it:
``DropTable`` moves the table back, ``FinishChangeTypeViaCopy`` swaps the
archived column back in (``pg.archive_reverse``, whose steps each go
through the runner); a bigint swap keeps the bigint columns, which integer
code reads and writes unchanged.
"""

from django.db.migrations.exceptions import IrreversibleError

from ..conf import conf
from ..exceptions import UnsafeOperationError
from . import archive_store as store
from . import catalog, sql
from .archive_ddl import (column_ddl, column_facts, drop_foreign_key, drop_triggers, hold_indexes, move_table,
                          strip_column, table_ddl, table_facts)
from .copy_steps import drop_column_statements, drop_trigger_statements
from .schema import collecting, shadow_column
from .statements import Call, Skipped


def _shadow_statements(schema_editor, table, column, facts):
    """The cast trigger and shadow column of a column that goes (see ``copy_steps.drop_column_statements``)."""
    shadow = shadow_column(column)
    if shadow not in (facts["columns"] if facts else []) and (
            facts or not catalog.column_exists(schema_editor.connection, table, shadow)):
        return []
    return [*drop_trigger_statements(schema_editor, table, "cast", column, shadow), sql.drop_column(table, shadow)]


def column_statements(schema_editor, table, column, *, app_label, reason, shadow=True, virtual=False):
    """Statements removing ``column`` from ``table`` in a contract step: archive it, or drop it.

    ``reason`` names the operation ("removal", "rename", "type-change",
    "bigint"); ``shadow`` also drops the column's cast shadow (a removal or
    a rename source has nothing left to copy into it; a type change and a
    key swap rename their shadow into the column's place themselves).
    ``virtual``: the models say the column is a virtual generated one; only
    the plan (which reads no catalog) needs it, to show the drop the run makes.
    The statements (``pg.sql``) go into one ``Transaction`` of the
    operation's plan, with the manifest row: the archive and its record
    commit together. Returns an empty list when the column is already gone
    (a re-run).
    """
    mode = conf.archive_mode(app_label)
    if mode is None:  # as before archiving existed
        return drop_column_statements(schema_editor, table, column) if shadow else [sql.drop_column(table, column)]
    if collecting(schema_editor):
        # No catalog in a plan (sqlmigrate, --plan may run without the database): the caller's field says
        # whether the column is virtual; the run itself goes by the catalog below.
        if virtual:
            return [sql.drop_column(table, column).but(
                label=f"drop {column}: a virtual generated column stores no values to archive")]
        app, migration = store.current_migration(app_label)
        name = store.column_name(column, app, migration, taken=set())
        return [sql.rename_column(table, column, name).but(
            label=f"archive {column} ({mode} mode) as {name}: its constraints, default and NOT NULL go, its indexes "
                  f"are set aside (dropped CONCURRENTLY once the step commits), "
                  f"the manifest {store.schema_name()}.{store.TABLE} records them")]
    connection = schema_editor.connection
    facts = column_facts(connection, table, column)
    extra = _shadow_statements(schema_editor, table, column, facts) if shadow else []
    if facts is None:
        return extra
    if facts["generated"] == "v":
        # A virtual generated column stores nothing: there are no values to keep, and PostgreSQL
        # cannot turn it into a plain column (DROP EXPRESSION is for stored ones). It goes.
        return [*extra, sql.drop_column(table, column)]
    store.ensure(connection)
    app, migration = store.current_migration(app_label)
    pk, pk_type = facts.pop("primary_key") or (None, None)
    name = store.column_name(column, app, migration, taken=set(facts.pop("columns")))
    hold_indexes(facts, name)
    copy_table = store.copy_table_name(table, column, app, migration) if mode == "copy" else None
    record = store.insert_statement(
        connection, kind="column", reason=reason, mode=mode, state=store.PENDING, app_label=app,
        migration=migration, table_schema=facts["schema"], table_name=table, column_name=column,
        archive_name=name, copy_table=copy_table, pk_column=pk, pk_type=pk_type, definition=facts,
        ddl=column_ddl(schema_editor.quote_name, table, column, facts))
    return [*extra, *strip_column(table, column, facts),
            sql.rename_column(table, column, name).but(label=f"archive {column} as {name}"), record]


def drop_set_aside_indexes():
    """Plan item for right after a ``Transaction`` holding ``column_statements``: drop what they set aside.

    The archive step renames a column's plain indexes aside instead of dropping
    them under its lock (``archive_ddl.hold_indexes``); this drops them
    CONCURRENTLY once that transaction has committed. In an atomic migration
    it does nothing, and ``finish_pending`` does it after the migration (as it
    does for a run killed in between).
    """
    def drop(connection):
        from .archive_finish import drop_all_held_indexes

        done = drop_all_held_indexes(connection)
        return f"{done} archive(s)" if done else Skipped("no index set aside")

    return Call("drop the archived column's set-aside indexes concurrently", drop, quiet=True)


def table_statements(schema_editor, table, *, app_label):
    """Statements removing ``table`` in a contract step: move it into the archive schema, or drop it.

    Its own foreign keys (and any pointing at it) are dropped first and
    recorded: an archived table must not stop a delete of a live row, nor
    cascade one into the archive. safemigrate's dual-write triggers on it
    go too. Returns an empty list when the table is already gone.
    """
    quote = schema_editor.quote_name
    mode = conf.archive_mode(app_label)
    if mode is None:
        return [sql.drop_table(table)]
    app, migration = store.current_migration(app_label)
    if collecting(schema_editor):
        name = store.table_name(table, app, migration, taken=set())
        return [sql.rename_table(table, name).but(
                    label=f"archive {table}: its foreign keys go (recorded in the manifest "
                          f"{store.schema_name()}.{store.TABLE})"),
                sql.set_schema(name, store.schema_name()).but(table=table)]
    connection = schema_editor.connection
    facts = table_facts(connection, table)
    if facts is None:
        return []
    if catalog.is_partitioned(connection, table):
        refuse_partitioned(table, app_label)
    store.ensure(connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname FROM pg_class WHERE relnamespace IN (%s::regnamespace, %s::regnamespace)",
                       [quote(store.schema_name()), quote(facts["schema"])])
        taken = {name for (name,) in cursor.fetchall()}
    name = store.table_name(table, app, migration, taken)
    objects = {"indexes": {}, "sequences": {}}
    for kind, names in (("indexes", [index["name"] for index in facts["indexes"]]), ("sequences", facts["sequences"])):
        for old in names:
            objects[kind][old] = new = store.object_name(old, app, migration, table, taken)
            taken.add(new)
    definition = {**facts, "object_names": objects}
    record = store.insert_statement(
        connection, kind="table", reason="table", mode="table", state=store.PENDING, app_label=app,
        migration=migration, table_schema=facts["schema"], table_name=table, column_name=None, archive_name=name,
        copy_table=None, pk_column=None, pk_type=None, definition=definition, ddl=table_ddl(quote, table, facts))
    return [*drop_triggers(table, facts["triggers"]),
            *(drop_foreign_key(fk["table"], fk["name"]) for fk in facts["foreign_keys"]),
            *move_table(facts["schema"], table, name, store.schema_name(), objects),
            record]


def refuse_partitioned(table, app_label):
    """A partitioned table is not archived: say so, and how to drop it, before anything of the step runs.

    ``SET SCHEMA`` of a partitioned table moves the parent only: its
    partitions would stay in the application's schema under their own names,
    holding the rows, where a later table or partition of the same name
    collides with them, and neither ``archive restore`` nor ``purge`` would
    know them. Dropping it for real instead would lose the data the archive
    promises to keep, so the contract stops and the user chooses.
    """
    raise UnsafeOperationError(
        f"Cannot archive table {table!r}: it is partitioned, and moving it into the archive schema "
        f"{store.schema_name()} would move the parent table only, leaving its partitions (and their rows) "
        f"behind under their own names, where later tables collide with them. Nothing of this step was "
        f"changed. Keep the data yourself first (pg_dump -t, or DETACH PARTITION and move each partition "
        f"with ALTER TABLE ... SET SCHEMA {store.schema_name()}), then drop it for real by turning the archive "
        f"off for this app: SAFEMIGRATE = {{\"ARCHIVE\": {{\"{app_label}\": False}}}}, and run the contract again."
    )


def finish_pending(connection):
    """Checksum (and, in copy mode, copy) every archive whose archive step committed; see ``archive_finish``."""
    from .archive_finish import finish_all

    return finish_all(connection)


# -- reverse hooks: plan items of the operations' backwards plans -------------------------------


def restore_table_plan(operation, table, *, app_label):
    """``DropTable`` reversed: move the archived table back (``archive restore`` does the same)."""

    def move_back(connection):
        from .archive_restore import restore

        app, migration = store.current_migration(app_label)
        candidates = store.find(connection, table=table, reasons=["table"], migration=f"{app}.{migration}") or \
            store.find(connection, table=table, reasons=["table"])
        if not candidates:
            if store.find(connection, table=table, reasons=["table"], states=[store.RESTORED]) and \
                    catalog.table_exists(connection, table):
                return Skipped("restored already")  # a re-run of this reverse, or `archive restore` ran first
            raise IrreversibleError(
                f"{operation.describe()} cannot be reversed: {table} was dropped, not archived (SAFEMIGRATE"
                f"['ARCHIVE'] was off for {app_label} when the contract ran), so its data is gone. Restore it "
                f"from a backup, or leave this migration applied.")
        return restore(connection, candidates[0]).summary()

    return [Call(f"move {table} back from the archive", move_back)]


def keep_bigint_plan(table):
    """``FinishChangePrimaryKeyToBigint`` reversed: the key and its foreign keys stay bigint.

    Integer code reads and writes bigint columns unchanged, and every key
    fits, so swapping integer columns back would only rewrite indexes
    under traffic. The archived integer columns stay until ``archive
    restore`` (which checks they equal the bigint ones) or ``archive purge``.
    """
    return [Call("keep the bigint key (integer code works with it)",
                 lambda connection: Skipped(f"the integer columns of {table} stay archived; see "
                                            f"`manage.py archive list`"))]


def swap_back_plan(operation, schema_editor, model, field, *, app_label):
    """``FinishChangeTypeViaCopy`` reversed: swap the archived column back in (``pg.archive_reverse``).

    One ``Call`` whose steps (a batched backfill, concurrent builds, the
    swap transaction) each go through the runner; it reads the manifest
    first, so it is left out when SQL is only collected.
    """
    from .archive_reverse import swap_back

    return [Call("swap the archived column back in",
                 lambda connection: swap_back(operation, schema_editor, model, field, app_label=app_label),
                 quiet=True)]
