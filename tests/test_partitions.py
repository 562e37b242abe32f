"""Safe operations on declaratively partitioned tables (range and list), per server version.

Each operation either works on a partitioned table and ends in what plain Django's
statement gives (compared partition by partition: index definitions and validity,
which index is attached to which, constraints and their validation) or refuses with
the safe sequence. Not traffic tests: they run in the PostgreSQL 15 corner too, where
``NOT VALID`` foreign keys on a partitioned table do not exist.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection, migrations, models
from django.db.migrations.state import ProjectState
from django.db.models import Q

from safemigrate.exceptions import UnsafeOperationError
from safemigrate.operations import (
    AddCheckConstraint,
    AddColumnNullable,
    AddForeignKey,
    AddUniqueConstraint,
    Backfill,
    ChangePrimaryKeyToBigint,
    ChangeTypeViaCopy,
    CreateIndexConcurrently,
    DropColumn,
    DropTable,
    DropIndexConcurrently,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RemoveFieldSafely,
    RenameViaCopy,
    SetNotNull,
)
from safemigrate.pg import catalog, partitions
from safemigrate.pg.reporting import Report, collecting
from testproject.partitioned import new_partition_sql
from testproject.partitioned import snapshot as partition_snapshot
from tests.utils import apply_operations, execute, unique_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(operations, state):
    report = Report()
    with collecting(report):
        new_state, _ = apply_operations(operations, state)
    return new_state, report


def plain(operations, state):
    """The same operations the way plain Django runs them (one transaction, plain statements)."""
    return apply_operations(operations, state, atomic=True)[0]


def snapshot(table):
    """``testproject.partitioned.snapshot`` of ``table``: its partitions' indexes, constraints, columns."""
    return partition_snapshot(execute, table)


def index_everywhere(table, name):
    """(valid, partitions with an attached index, partitions in all) of the partitioned index ``name``."""
    valid = execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [f'"{name}"'])[0][0]
    attached = execute("SELECT count(*) FROM pg_partition_tree(to_regclass(%s)) WHERE level > 0",
                       [f'"{name}"'])[0][0]
    total = execute("SELECT count(*) FROM pg_partition_tree(to_regclass(%s)) WHERE level > 0",
                    [f'"{table}"'])[0][0]
    return valid, attached, total


def indexes_per_partition(table):
    return execute("""
        SELECT c.relname, count(i.indexrelid) FROM pg_partition_tree(to_regclass(%s)) t
          JOIN pg_class c ON c.oid = t.relid LEFT JOIN pg_index i ON i.indrelid = c.oid
         WHERE t.isleaf GROUP BY 1 ORDER BY 1""", [f'"{table}"'])


# -- indexes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["list", "range"])
def test_index_is_built_partition_by_partition_and_ends_as_plain_djangos(partitioned, strategy):
    table, state = partitioned(strategy, rows=4000)
    reference, _ = partitioned(strategy, rows=4000)
    index = models.Index(fields=["v", "label"], name="item_v_label_idx")
    _, report = run([CreateIndexConcurrently("item", index)], state)
    assert index_everywhere(table, "item_v_label_idx") == (True, 8, 8)
    assert "8 partition indexes built concurrently" in report.steps[0].detail
    # Plain Django on an identical table: CREATE INDEX on the parent (a build holding SHARE on every partition).
    other = models.Index(fields=["v", "label"], name="ref_v_label_idx")
    plain([migrations.AddIndex("item", other)], _retable(state, reference))
    assert snapshot(table) == _renamed(snapshot(reference), "ref_v_label_idx", "item_v_label_idx", reference, table)
    # Again: nothing to do.
    _, again = run([CreateIndexConcurrently("item", index)], state)
    assert again.steps[0].skipped


def _retable(state, table):
    state = state.clone()
    state.models["shop", "item"].options["db_table"] = table
    return state


def _renamed(shot, old_index, new_index, old_table, new_table):
    text = repr(shot).replace(old_index, new_index)
    return eval(text)  # noqa: S307 - our own repr of tuples, lists, strings and bools


def test_unique_index_with_expressions_and_condition(partitioned):
    table, state = partitioned("list")
    constraint = models.UniqueConstraint(models.F("v"), "region", condition=Q(v__gt=10), name="item_v_u")
    run([AddUniqueConstraint("item", constraint)], state)
    assert index_everywhere(table, "item_v_u") == (True, 8, 8)


def test_a_build_killed_half_way_is_finished_by_the_next_run(partitioned, tmp_path):
    """kill -9 the process building the index after two partitions; the next run finishes it."""
    table, state = partitioned("list", rows=400_000)
    script = tmp_path / "build.py"
    script.write_text(f"""
import django, os, sys
sys.path.insert(0, {REPO!r})
django.setup()
from django.db import connection, models
from safemigrate.operations import CreateIndexConcurrently
from tests.test_partitions import item_state
from tests.utils import apply_operations
apply_operations([CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_killed_idx"))],
                 item_state({table!r}))
""")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="testproject.settings",
               DATABASE_URL=_test_database_url(), PYTHONPATH=REPO)
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        done = execute("SELECT count(*) FROM pg_partition_tree(to_regclass('item_killed_idx')) WHERE level > 0")
        if done and done[0][0] >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stdout.read().decode()[-2000:]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Its server session may still be building one partition's index: migrate's run lock waits for
    # such orphans (ORPHANS = "wait"); applying the operation directly, the test waits itself.
    deadline = time.monotonic() + 60
    while execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  "AND pid <> pg_backend_pid() AND query LIKE 'CREATE INDEX%%'")[0][0]:
        assert time.monotonic() < deadline, "the killed run's statement did not end"
        time.sleep(0.05)
    valid, attached, total = index_everywhere(table, "item_killed_idx")
    assert not valid and 2 <= attached < total
    run([CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_killed_idx"))], state)
    assert index_everywhere(table, "item_killed_idx") == (True, 8, 8)
    # Exactly the key index and the new one on every partition: no duplicate, no INVALID leftover.
    assert {count for _, count in indexes_per_partition(table)} == {2}
    assert execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]


def item_state(table):
    from django.db.migrations.state import ModelState, ProjectState

    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [
        ("id", models.BigAutoField(primary_key=True)), ("region", models.CharField(max_length=10)),
        ("v", models.IntegerField()), ("label", models.CharField(max_length=20, null=True))],
        options={"db_table": table}))
    return state


def _test_database_url():
    settings = connection.settings_dict
    host = settings["HOST"]
    user = settings["USER"] or "postgres"
    if host.startswith("/"):
        return f"postgresql://{user}@/{settings['NAME']}?host={host}"
    return f"postgresql://{user}:{settings['PASSWORD']}@{host}:{settings['PORT'] or 5432}/{settings['NAME']}"


def test_partitions_created_during_the_build_get_the_index_too(partitioned, monkeypatch):
    table, state = partitioned("list", partitions=4)
    calls = []
    original = partitions.run_unbounded

    def build_and_meanwhile_add_a_partition(editor, sql, params=None):
        if not calls:  # another session creates partitions while the first partition's index builds
            execute(new_partition_sql(table, 4))
            execute(f"CREATE TABLE \"{table}_p5\" (LIKE \"{table}\" INCLUDING DEFAULTS)")
            execute(f"ALTER TABLE \"{table}\" ATTACH PARTITION \"{table}_p5\" FOR VALUES IN ('r5')")
        calls.append(sql)
        return original(editor, sql, params)

    monkeypatch.setattr(partitions, "run_unbounded", build_and_meanwhile_add_a_partition)
    run([CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_v_grow_idx"))], state)
    assert index_everywhere(table, "item_v_grow_idx") == (True, 6, 6)


def test_drop_index_on_a_partitioned_table(partitioned):
    table, state = partitioned("range")
    index = models.Index(fields=["v"], name="item_v_drop_idx")
    with_index, _ = run([CreateIndexConcurrently("item", index)], state)
    run([DropIndexConcurrently("item", "item_v_drop_idx")], with_index)
    assert catalog.index_state(connection, "item_v_drop_idx") is None
    assert {count for _, count in indexes_per_partition(table)} == {1}


# -- constraints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["list", "range"])
def test_unique_constraint_including_the_partition_key_ends_as_plain_djangos(partitioned, strategy):
    key = "region" if strategy == "list" else "id"
    table, state = partitioned(strategy)
    reference, _ = partitioned(strategy)
    run([AddUniqueConstraint("item", models.UniqueConstraint(fields=["v", key], name="item_v_key_uniq"))], state)
    plain([migrations.AddConstraint("item", models.UniqueConstraint(fields=["v", key], name="ref_v_key_uniq"))],
          _retable(state, reference))
    assert snapshot(table) == _renamed(snapshot(reference), "ref_v_key_uniq", "item_v_key_uniq", reference, table)
    assert execute("SELECT convalidated FROM pg_constraint WHERE conname = 'item_v_key_uniq'") == [(True,)]


def test_unique_constraint_without_the_partition_key_is_refused_before_anything_changes(partitioned):
    table, state = partitioned("list")
    before = snapshot(table)
    with pytest.raises(UnsafeOperationError) as error:
        run([AddUniqueConstraint("item", models.UniqueConstraint(fields=["v"], name="item_v_only_uniq"))], state)
    message = str(error.value)
    assert "list-partitioned on (region), 8 partitions" in message
    assert "include the partition key" in message and "'region'" in message
    assert snapshot(table) == before


def test_unique_constraint_over_duplicates_leaves_nothing_behind(partitioned):
    table, state = partitioned("list")
    execute(f"UPDATE \"{table}\" SET v = 1 WHERE id IN (SELECT id FROM \"{table}\" WHERE region = 'r5' LIMIT 2)")
    before = snapshot(table)
    with pytest.raises(UnsafeOperationError, match="duplicate"):
        run([AddUniqueConstraint("item", models.UniqueConstraint(fields=["v", "region"], name="item_dup_uniq"))],
            state)
    assert snapshot(table) == before


@pytest.mark.parametrize("strategy", ["list", "range"])
def test_foreign_key_from_a_partitioned_table_as_this_server_allows(partitioned, strategy):
    tags = unique_table("tag")
    execute(f'CREATE TABLE "{tags}" (id bigint PRIMARY KEY)')
    execute(f'INSERT INTO "{tags}" SELECT generate_series(1, 50)')
    try:
        table, state = partitioned(strategy)
        reference, _ = partitioned(strategy)
        execute(f'UPDATE "{table}" SET v = v % 50 + 1')
        execute(f'UPDATE "{reference}" SET v = v % 50 + 1')
        from django.db.migrations.state import ModelState

        for current in (state,):
            current.add_model(ModelState("shop", "Tag", [("id", models.BigIntegerField(primary_key=True))],
                                         options={"db_table": tags}))
        field = models.ForeignKey("shop.Tag", models.CASCADE, null=True, db_index=False)
        _, report = run([AddForeignKey("item", "tag", field)], state)
        plain([migrations.AddField("item", "tag", field.clone())], _retable(state, reference))
        def fk_name(of):
            names = {name for (name,) in execute("SELECT DISTINCT conname FROM pg_constraint WHERE contype = 'f' "
                                                 "AND conrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [of])}
            assert len(names) == 1, names  # the partitions' constraints carry the parent's name
            return names.pop().replace(of, "T")

        ours, theirs = snapshot(table), snapshot(reference)
        assert ours == eval(repr(theirs).replace(fk_name(reference), fk_name(table)))  # noqa: S307
        assert all(row[3] for rel in ours for row in rel[2] if row[1] == "f"), "every FK validated"
        steps = " ".join(step.step for step in report.steps)
        assert "partition by partition" in steps
    finally:
        execute(f'DROP TABLE IF EXISTS "{tags}" CASCADE')


def test_foreign_key_violation_in_one_partition_leaves_nothing_behind(partitioned):
    tags = unique_table("tag")
    execute(f'CREATE TABLE "{tags}" (id bigint PRIMARY KEY)')
    execute(f'INSERT INTO "{tags}" SELECT generate_series(1, 10)')
    try:
        table, state = partitioned("list")
        execute(f'ALTER TABLE "{table}" ADD COLUMN tag_id bigint')
        execute(f"UPDATE \"{table}\" SET tag_id = 1 WHERE region <> 'r6'")
        execute(f"UPDATE \"{table}\" SET tag_id = 999 WHERE region = 'r6'")
        before = snapshot(table)
        statement = (f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_tag_fk" FOREIGN KEY (tag_id) '
                     f'REFERENCES "{tags}" (id)')
        with connection.schema_editor(atomic=False) as editor, pytest.raises(Exception) as error:
            partitions.add_foreign_key(editor, statement, table, f"{table}_tag_fk")
        assert "violates foreign key constraint" in str(error.value)
        assert snapshot(table) == before
    finally:
        execute(f'DROP TABLE IF EXISTS "{tags}" CASCADE')


def test_check_constraint_is_validated_partition_by_partition(partitioned):
    table, state = partitioned("range")
    reference, _ = partitioned("range")
    check = models.CheckConstraint(condition=Q(v__gte=0), name="item_v_gte_0")
    run([AddCheckConstraint("item", check)], state)
    plain([migrations.AddConstraint("item", check)], _retable(state, reference))
    assert snapshot(table) == snapshot(reference)


def test_validation_resumes_with_the_partitions_left(partitioned):
    table, state = partitioned("list")
    execute(f'ALTER TABLE "{table}" ADD CONSTRAINT v_positive CHECK (v > 0) NOT VALID')
    execute(f'ALTER TABLE "{table}_p0" VALIDATE CONSTRAINT v_positive')  # an earlier run got this far
    statements = []
    with connection.schema_editor(atomic=False) as editor, \
            _recording(statements):
        partitions.validate_constraint(editor, table, "v_positive")
    validated = [s for s in statements if "VALIDATE" in s]
    assert len(validated) == 8 and not any(f'"{table}_p0" VALIDATE' in s for s in validated), validated
    assert execute("SELECT bool_and(convalidated) FROM pg_constraint WHERE conname = 'v_positive'") == [(True,)]


class _recording:
    def __init__(self, statements):
        self.statements = statements

    def __enter__(self):
        def wrapper(execute_, sql, params, many, context):
            self.statements.append(sql)
            return execute_(sql, params, many, context)

        self.context = connection.execute_wrapper(wrapper)
        self.context.__enter__()

    def __exit__(self, *exc):
        self.context.__exit__(*exc)


def test_set_not_null_uses_per_partition_checks(partitioned):
    table, state = partitioned("list")
    execute(f'UPDATE "{table}" SET label = \'x\' WHERE label IS NULL')
    nullable = state.models["shop", "item"].fields["label"]
    target = models.CharField(max_length=20)
    run([SetNotNull("item", "label", target)], state)
    assert execute("SELECT count(*) FROM pg_attribute WHERE attname = 'label' AND NOT attnotnull "
                   "AND attrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table]) == [(0,)]
    assert execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE '%%notnull%%' "
                   "AND conrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table]) == [(0,)]
    assert nullable.null


# -- columns, triggers, backfills --------------------------------------------------------------------


def test_add_rename_retype_and_remove_columns_with_triggers_and_backfill(partitioned):
    table, state = partitioned("list", rows=3000)
    step1, _ = run([AddColumnNullable("item", "currency", models.CharField(max_length=3, default="EUR")),
                    RenameViaCopy("item", "label", "title"),
                    ChangeTypeViaCopy("item", "v", models.BigIntegerField())], state)
    # The dual-write triggers run on every partition, and on partitions created after them.
    execute(new_partition_sql(table, 8))
    execute(f"INSERT INTO \"{table}\" (region, v, label) VALUES ('r8', -5, 'old-code')")
    execute(f"INSERT INTO \"{table}\" (region, v, title) VALUES ('r3', -6, 'new-code')")
    assert execute(f"SELECT title, label, currency FROM \"{table}\" WHERE v IN (-5, -6) ORDER BY v DESC") == [
        ("old-code", "old-code", "EUR"), ("new-code", "new-code", "EUR")]
    assert execute(f'SELECT count(*) FROM "{table}" WHERE title IS DISTINCT FROM label') == [(0,)]
    step2, _ = run([FinishRenameViaCopy("item", "label", "title"),
                    FinishChangeTypeViaCopy("item", "v", models.BigIntegerField())], step1)
    step3, _ = run([RemoveFieldSafely("item", "currency")], step2)
    run([DropColumn("item", "currency")], step3)
    assert execute(f"SELECT DISTINCT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attname = 'v' "
                   f"AND attrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table]) == [("bigint",)]
    assert execute("SELECT count(*) FROM pg_attribute WHERE attname IN ('label', 'currency') AND NOT attisdropped "
                   "AND attrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table]) == [(0,)]
    assert execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal "
                   "AND tgrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table]) == [(0,)]


def test_backfill_across_partitions_with_a_composite_key(partitioned):
    table, state = partitioned("list", rows=5000)
    _, report = run([Backfill("item", set={"label": "'b' || v"}, name=f"{table}-relabel")], state)
    assert execute(f"SELECT count(*) FROM \"{table}\" WHERE label <> 'b' || v") == [(0,)]
    assert report.steps[0].rows == 5000


def test_bigint_primary_key_swap_is_refused_with_the_safe_sequence(partitioned):
    table, state = partitioned("range")
    int_state = state.clone()
    before = snapshot(table)
    with pytest.raises(UnsafeOperationError) as error:
        run([ChangePrimaryKeyToBigint("item")], int_state)
    assert "range-partitioned on (id)" in str(error.value) and "Safe sequence" in str(error.value)
    assert snapshot(table) == before


# -- plain Django migrations, through migrate's execution path -----------------------------------------

HEADER = "from django.db import migrations, models\n"


def _initial(table, tags, strategy):
    from testproject.partitioned import create_sql

    statements = create_sql(table, ["region varchar(10) NOT NULL", "v integer NOT NULL", "label varchar(20) NULL"],
                            strategy)
    return HEADER + f"""
class Migration(migrations.Migration):
    initial = True
    operations = [
        migrations.CreateModel("Tag", [("id", models.BigAutoField(primary_key=True))],
                               options={{"db_table": {tags!r}}}),
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL({statements!r})],
            state_operations=[migrations.CreateModel("Item", [
                ("id", models.BigAutoField(primary_key=True)), ("region", models.CharField(max_length=10)),
                ("v", models.IntegerField()), ("label", models.CharField(max_length=20, null=True)),
            ], options={{"db_table": {table!r}}})],
        ),
    ]
"""


PLAIN_CHANGES = HEADER + """  # {key}: the partition key, which a unique constraint must include
class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.AddIndex("item", models.Index(fields=["v"], name="item_plain_v_idx")),
        migrations.AddConstraint("item", models.UniqueConstraint(fields=["v", "{key}"], name="item_plain_uniq")),
        migrations.AddConstraint("item", models.CheckConstraint(condition=models.Q(v__gte=0), name="item_plain_chk")),
        migrations.AddField("item", "tag", models.ForeignKey("billing.Tag", models.SET_NULL, null=True)),
    ]
"""


@pytest.mark.parametrize("strategy", ["list", "range"])
def test_plain_django_operations_on_a_partitioned_table_are_rewritten_per_partition(tmp_path, strategy,
                                                                                     transactional_db):
    from tests.utils import forget_migrations, run_command, temporary_migration_modules

    table, tags = unique_table("part"), unique_table("tag")
    files = {"0001_initial.py": _initial(table, tags, strategy),
             "0002_plain.py": PLAIN_CHANGES.replace("{key}", "region" if strategy == "list" else "id")}
    try:
        with temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "0001", verbosity=0)
            execute(f"INSERT INTO \"{table}\" (region, v) SELECT 'r' || (i % 8), i FROM generate_series(1, 2000) i")
            out, err = run_command("migrate", "billing", verbosity=1)
        assert "rewritten to keep traffic flowing" in err and "not made safe" not in err, err
        assert index_everywhere(table, "item_plain_v_idx") == (True, 8, 8)
        assert index_everywhere(table, "item_plain_uniq") == (True, 8, 8)
        constraints = execute("SELECT c.relname, k.contype, k.convalidated FROM pg_constraint k "
                              "JOIN pg_class c ON c.oid = k.conrelid WHERE k.contype IN ('u', 'c', 'f') "
                              "AND k.conrelid = ANY(SELECT relid FROM pg_partition_tree(%s))", [table])
        assert len(constraints) == 9 * 3 and all(validated for _, _, validated in constraints)
        # The foreign key's index (Django's db_index=True) is a partitioned index too.
        fk_index = execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE i.indrelid = %s::regclass AND pg_get_indexdef(c.oid) LIKE '%%(tag_id)%%'",
                           [f'"{table}"'])
        assert len(fk_index) == 1 and index_everywhere(table, fk_index[0][0]) == (True, 8, 8)
    finally:
        execute(f'DROP TABLE IF EXISTS "{table}", "{tags}" CASCADE')
        forget_migrations("billing")


# -- the linter, when it can see the database -----------------------------------------------------------

LINTED = HEADER + """from django.contrib.postgres.operations import AddIndexConcurrently


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0001_initial")]
    operations = [
        AddIndexConcurrently("item", models.Index(fields=["v"], name="item_lint_v_idx")),
        migrations.AddIndex("item", models.Index(fields=["label"], name="item_lint_label_idx")),
        migrations.AddConstraint("item", models.UniqueConstraint(fields=["v"], name="item_lint_v_uniq")),
        migrations.AddConstraint("item", models.UniqueConstraint(fields=["v", "region"], name="item_lint_vr_uniq")),
        migrations.RunSQL('CREATE INDEX CONCURRENTLY lint_raw_idx ON "{table}" (v)'),
    ]
"""


def test_the_linter_knows_partitioned_tables_when_it_reads_the_database(tmp_path, transactional_db):
    import json

    from tests.utils import run_command, temporary_migration_modules

    table, tags = unique_table("part"), unique_table("tag")
    files = {"0001_initial.py": _initial(table, tags, "list"), "0002_lint.py": LINTED.replace("{table}", table)}
    try:
        with temporary_migration_modules(tmp_path, {"billing": files}):
            run_command("migrate", "billing", "0001", verbosity=0)
            execute(f"INSERT INTO \"{table}\" (region, v) SELECT 'r' || (i % 8), i FROM generate_series(1, 8000) i")
            execute(f'ANALYZE "{table}"')
            blind, _ = run_command("lint_migrations", "billing", "--format", "json")
            seeing, _ = run_command("lint_migrations", "billing", "--format", "json", "--table-sizes")
        blind, seeing = json.loads(blind)["findings"], json.loads(seeing)["findings"]
        assert not [f for f in blind if f["rule"] == "SAFE143"]
        refused = {f["operation"]: f for f in seeing if f["rule"] == "SAFE143"}
        assert len(refused) == 3, refused
        by_index = {f["operation_index"]: f for f in seeing if f["rule"] == "SAFE143"}
        assert set(by_index) == {0, 2, 4}
        assert "refuses CREATE INDEX CONCURRENTLY on a partitioned table" in by_index[0]["reason"]
        assert "list-partitioned on (region), 8 partitions" in by_index[2]["reason"]
        assert "lacks partition key column(s) region" in by_index[2]["reason"]
        add_index = next(f for f in seeing if f["rule"] == "SAFE112")
        assert "partition by partition" in add_index["alternative"] and add_index["rows"] == 8000
    finally:
        execute(f'DROP TABLE IF EXISTS "{table}", "{tags}" CASCADE')
        forget_migrations_billing()


def forget_migrations_billing():
    from tests.utils import forget_migrations

    forget_migrations("billing")


class _Killed(BaseException):
    """Stands for the process dying between two steps (nothing after it runs, nothing is cleaned up)."""


@pytest.mark.parametrize("what", ["unique", "foreign key"])
def test_unique_and_foreign_key_stopped_between_partitions_finish_on_the_next_run(partitioned, monkeypatch, what):
    table, state = partitioned("list")
    reference, _ = partitioned("list")
    tags = unique_table("tag")
    execute(f'CREATE TABLE "{tags}" (id bigint PRIMARY KEY)')
    execute(f'INSERT INTO "{tags}" SELECT generate_series(1, 10)')
    try:
        for name in (table, reference):
            execute(f'ALTER TABLE "{name}" ADD COLUMN tag_id bigint')
            execute(f'UPDATE "{name}" SET tag_id = 1 + v % 10')

        def do(on):
            with connection.schema_editor(atomic=False) as editor:
                if what == "unique":
                    partitions.add_unique_constraint(editor, on, f"{on}_uniq", ["v", "region"])
                else:
                    partitions.add_foreign_key(editor, f'ALTER TABLE "{on}" ADD CONSTRAINT "{on}_fk" FOREIGN KEY '
                                                       f'(tag_id) REFERENCES "{tags}" (id)', on, f"{on}_fk")

        do(reference)
        calls = []

        def dying(original):
            def run(*args, **kwargs):  # the fifth statement (DDL step or validation) never runs
                calls.append(args[1])
                if len(calls) == 5:
                    raise _Killed()
                return original(*args, **kwargs)
            return run

        with monkeypatch.context() as patch:
            patch.setattr(partitions, "run_ddl", dying(partitions.run_ddl))
            patch.setattr(partitions, "run_unbounded", dying(partitions.run_unbounded))
            with pytest.raises(_Killed):
                do(table)
        do(table)
        ours = repr(snapshot(table)).replace(f"{table}_uniq", "N").replace(f"{table}_fk", "N")
        theirs = repr(snapshot(reference)).replace(f"{reference}_uniq", "N").replace(f"{reference}_fk", "N")
        assert ours == theirs
    finally:
        execute(f'DROP TABLE IF EXISTS "{tags}" CASCADE')


def test_type_change_of_a_column_under_a_unique_constraint_and_a_check(partitioned):
    """The shadow column gets the constraint partition by partition; the swap gives it the field's name."""
    table, state = partitioned("list")
    reference, _ = partitioned("list")
    unique = models.UniqueConstraint(fields=["v", "region"], name="item_vr_uniq")
    check = models.CheckConstraint(condition=Q(v__gte=0), name="item_v_check")
    constrained, _ = run([AddUniqueConstraint("item", unique), AddCheckConstraint("item", check)], state)
    ref_unique = models.UniqueConstraint(fields=["v", "region"], name="ref_vr_uniq")
    ref_check = models.CheckConstraint(condition=Q(v__gte=0), name="ref_v_check")
    ref_state = plain([migrations.AddConstraint("item", ref_unique), migrations.AddConstraint("item", ref_check)],
                      _retable(state, reference))
    expanded, _ = run([ChangeTypeViaCopy("item", "v", models.BigIntegerField())], constrained)
    execute(f"INSERT INTO \"{table}\" (region, v) VALUES ('r2', 123456)")
    run([FinishChangeTypeViaCopy("item", "v", models.BigIntegerField())], expanded)
    plain([migrations.AlterField("item", "v", models.BigIntegerField())], ref_state)
    execute(f"INSERT INTO \"{reference}\" (region, v) VALUES ('r2', 123456)")
    from testproject.partitioned import snapshot as named

    # Plain Django dropped the old column; the contract archived it (ARCHIVE "soft"): look past it, as the
    # oracle does. What the archive left must be the bare column on every partition: no index, constraint,
    # default or NOT NULL naming it (those stay in the comparison).
    ours, theirs = named(execute, table, names=False, archives=False), named(execute, reference, names=False)
    assert ours == theirs
    archived = [[column for column in relation[3] if column[0].startswith("_archived_")]
                for relation in named(execute, table, names=False)]
    assert archived == [[("_archived_manual_v", "integer", False, None)]] * len(archived) and len(archived) == 9
    assert execute(f'SELECT count(*) FROM "{table}" WHERE "_archived_manual_v" IS NOT NULL') == [(1001,)]
    with pytest.raises(Exception, match="duplicate key"):
        execute(f"INSERT INTO \"{table}\" (region, v) VALUES ('r2', 123456)")


def test_dropping_a_partitioned_table_refuses_to_archive_and_changes_nothing(partitioned, settings):
    """SET SCHEMA would move the parent only: partitions would stay behind under their names. Refused.

    With the archive off for the app, the same step drops the table and its partitions, as Django does.
    """
    table, _ = partitioned("list")
    leaves = [name for (name,) in execute("SELECT c.relname FROM pg_partition_tree(%s::regclass) t "
                                          "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf", [f'"{table}"'])]
    assert len(leaves) == 8
    with pytest.raises(UnsafeOperationError) as error:
        apply_operations([DropTable(table)], ProjectState())
    message = str(error.value)
    assert "it is partitioned" in message and "partitions" in message and "Nothing of this step" in message
    assert '"ARCHIVE": {"shop": False}' in message
    assert execute(f'SELECT count(*) FROM "{table}"') == [(1000,)]
    assert execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s) AND relnamespace = current_schema()::regnamespace",
                   [leaves]) == [(8,)]
    assert execute("SELECT to_regclass('safemigrate_archive.manifest') IS NULL OR "
                   "(SELECT count(*) = 0 FROM safemigrate_archive.manifest WHERE table_name = %s)", [table]) == [(True,)]
    settings.SAFEMIGRATE = {"ARCHIVE": {"shop": False}}
    apply_operations([DropTable(table)], ProjectState())
    assert execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", [[table, *leaves]]) == [(0,)]


@pytest.mark.traffic
def test_a_partition_held_by_someone_else_never_makes_the_parent_wait(partitioned):
    """Autovacuum on one partition: the runner's bounded step gives up at once instead of holding the parent."""
    import threading

    import psycopg

    from django.test import override_settings

    from safemigrate.exceptions import LockTimeoutExhausted
    from safemigrate.pg import sql
    from safemigrate.pg.runner import run as run_plan

    table, _ = partitioned("list")
    url = _test_database_url()
    stop, waits = threading.Event(), []

    def traffic():
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute(f"SELECT count(*) FROM \"{table}\" WHERE region = 'r1'")
                waits.append(time.monotonic() - started)
                time.sleep(0.005)

    with psycopg.connect(url) as vacuum:  # what autovacuum holds on the partition it works on
        vacuum.execute(f'LOCK TABLE "{table}_p3" IN SHARE UPDATE EXCLUSIVE MODE')
        reader = threading.Thread(target=traffic)
        reader.start()
        try:
            with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 5,
                                                "RETRY_BACKOFF_BASE_MS": 50, "RETRY_BACKOFF_MAX_MS": 50}), \
                    connection.schema_editor(atomic=False) as editor, pytest.raises(LockTimeoutExhausted):
                run_plan(editor, [sql.add_column(table, "blocked", "int")], label="test")
        finally:
            stop.set()
            reader.join()
    assert len(waits) > 20 and max(waits) < 0.15, f"worst {max(waits) * 1000:.0f} ms"


# -- the statements: declared by the builders, run by the one runner ------------------------------------


def test_the_partition_builders_declare_the_locks_the_text_classifier_reads():
    """Two answers to "which lock": each partition builder's declaration and the SQL-text classifier.

    (``tests/test_statements.py`` checks the same for the operations' own statements.)
    ``CREATE INDEX ... ON ONLY`` builds nothing (the parent has no rows): the builder
    declares no work where the text alone must assume a build.
    """
    from safemigrate.pg import sql
    from safemigrate.pg.classify import classify
    from safemigrate.pg.locks import Lock
    from safemigrate.pg.statements import How

    partition = '"app"."item_p3"'
    fk = 'ALTER TABLE "item" ADD CONSTRAINT "item_fk" FOREIGN KEY ("tag_id") REFERENCES "tag" ("id")'
    statements = [
        *sql.lock_partition_tree("item", [partition, '"app"."item_p4"'], Lock.SHARE_ROW_EXCLUSIVE),
        sql.create_index_on_only("item", ' ("v")', name="item_v_idx", unique=True),
        sql.create_index_on_only(partition, "USING btree (v)"),
        sql.create_partition_index_concurrently(partition, "USING btree (v)"),
        sql.attach_index('"app"."item_v_idx"', '"app"."item_p3_v_idx"', partition),
        sql.add_unique(partition, "item_p3_v_region_key", ["v", "region"]),
        sql.add_unique_using_index(partition, "item_p3_v_region_key", "item_p3_v_region_idx"),
        sql.add_foreign_key(fk, "item", "item_fk", "tag"),
        sql.add_foreign_key_not_valid(fk.replace('"item"', partition, 1), partition, "item_fk", "tag"),
        sql.validate_constraint(partition, "item_fk"),
        sql.drop_index_concurrently('"app"."item_p3_v_idx"', partition),
        sql.drop_index("item_v_idx", "item"),
    ]
    for statement in statements:
        info = classify(statement.sql)
        assert info.lock == statement.lock, (statement.sql, info.lock, statement.lock)
        assert (info.takes_lock and info.in_transaction) == (statement.how is How.BOUNDED), statement.sql
        if "ON ONLY" in statement.sql:
            assert info.work and not statement.work
    assert statements[1].also_locks == (('"app"."item_p3"', Lock.SHARE_ROW_EXCLUSIVE),
                                        ('"app"."item_p4"', Lock.SHARE_ROW_EXCLUSIVE))


def test_the_runner_locks_the_tree_first_in_the_declared_mode(partitioned):
    """A bounded step on a partitioned table locks the parent, then the partitions NOWAIT, in its own mode.

    Autovacuum holding one partition (SHARE UPDATE EXCLUSIVE) makes an ACCESS EXCLUSIVE step
    give up at once and retry; a step that declares ACCESS SHARE (a view over the table) goes
    through, as it would on an unpartitioned table (the tree is not locked harder than the
    step itself locks it).
    """
    import psycopg
    from django.test import override_settings

    from safemigrate.exceptions import LockTimeoutExhausted
    from safemigrate.pg import sql
    from safemigrate.pg.runner import run as run_plan

    table, _ = partitioned("list", rows=100)
    view = f"{table}_v"
    sent = []
    fast = {"LOCK_TIMEOUT_MS": 100, "LOCK_RETRIES": 1, "RETRY_BACKOFF_BASE_MS": 10, "RETRY_BACKOFF_MAX_MS": 10}
    with psycopg.connect(_test_database_url()) as vacuum:
        vacuum.execute(f'LOCK TABLE "{table}_p3" IN SHARE UPDATE EXCLUSIVE MODE')  # as autovacuum holds it
        with override_settings(SAFEMIGRATE=fast), connection.schema_editor(atomic=False) as editor, \
                _recording(sent):
            with pytest.raises(LockTimeoutExhausted):
                run_plan(editor, [sql.add_column(table, "blocked", "int")], label="test")
            run_plan(editor, [sql.create_view(view, table)], label="test")
        vacuum.rollback()
    try:
        locks = [s for s in sent if s.startswith("LOCK TABLE ONLY")]
        assert locks[:2] == [f'LOCK TABLE ONLY "{table}" IN ACCESS EXCLUSIVE MODE',
                             f'LOCK TABLE ONLY {_partition_list(table)} IN ACCESS EXCLUSIVE MODE NOWAIT']
        assert locks[-1] == f"LOCK TABLE ONLY {_partition_list(table)} IN ACCESS SHARE MODE NOWAIT"
        assert execute("SELECT count(*) FROM pg_attribute WHERE attname = 'blocked'") == [(0,)]
        assert execute(f'SELECT count(*) FROM "{view}"') == [(100,)]
    finally:
        execute(f'DROP VIEW IF EXISTS "{view}"')


def _partition_list(table):
    return ", ".join(f'"public"."{table}_p{i}"' for i in sorted(range(8), key=lambda i: f"{table}_p{i}"))
