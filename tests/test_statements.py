"""The statement model: one place writes DDL, declares its lock, and says how to re-run it.

Checked here: DDL text lives only in ``pg/`` (the builders); no operation
describes its locks in free text; every statement an operation declares
carries a lock that the SQL-text classifier, reading the same SQL, agrees
with; the runner honours the re-run checks; and the linter judges
safemigrate's operations by what they declare.
"""

import ast
import re
from pathlib import Path

import pytest
from django.db import connection, models
from django.db.migrations.state import ModelState, ProjectState

import safemigrate
from safemigrate import operations as safe
from safemigrate.pg import checks, sql
from safemigrate.pg.classify import classify_script
from safemigrate.pg.locks import Lock
from safemigrate.pg.reporting import Report, collecting
from safemigrate.pg.runner import run
from safemigrate.pg.statements import Batched, DeclaredSQL, How, Statement, Transaction
from safemigrate.planning import rules
from tests.utils import execute, unique_table

PACKAGE = Path(safemigrate.__file__).parent
# DDL as safemigrate writes it: upper-case keywords (f-string fields read as "x").
DDL = re.compile(r"^\s*(ALTER|CREATE|DROP) (UNIQUE )?(TABLE|INDEX|VIEW|TRIGGER|FUNCTION|SEQUENCE)\b(?! [a-z]+ )")


def _string_parts(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)]
    return []


def test_ddl_text_is_written_only_in_the_engine():
    """Operations, planning and commands build statements through ``pg.sql``; they never spell DDL."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("pg/"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            for text in _string_parts(node):
                if DDL.match(text):
                    offenders.append(f"{relative}:{node.lineno}: {text[:60]!r}")
    assert not offenders, "\n".join(offenders)


def test_no_operation_describes_its_locks_in_free_text():
    for name in safe.__all__:
        cls = getattr(safe, name)
        assert not any("lock_level" in vars(klass) for klass in cls.__mro__), name


def state_with_item(table):
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [
        ("id", models.BigAutoField(primary_key=True)),
        ("label", models.CharField(max_length=20, null=True)),
        ("v", models.IntegerField(null=True)),
    ], options={"db_table": table}))
    return state


def sample_operations():
    """One instance of each safemigrate operation whose plan needs no database to show."""
    return [
        safe.AddColumnNullable("item", "n", models.IntegerField(null=True, db_index=True)),
        safe.AddColumnNullable("item", "p", models.PositiveIntegerField(default=0, unique=True)),
        safe.CreateIndexConcurrently("item", models.Index(fields=["v"], name="item_v_i")),
        safe.AddUniqueConstraint("item", models.UniqueConstraint(fields=["v"], name="item_v_u")),
        safe.AddCheckConstraint("item", models.CheckConstraint(condition=models.Q(v__gte=0), name="item_v_c")),
        safe.SetNotNull("item", "label", models.CharField(max_length=20)),
        safe.DropNotNull("item", "v", models.IntegerField(null=True)),
        safe.RenameViaCopy("item", "label", "title"),
        safe.RenameFieldViaView("item", "label", "title"),
        safe.RenameColumnViaView("item", "label", models.CharField(max_length=20, null=True, db_column="title")),
        safe.FinishRenameViaView("item", "label", "title"),
        safe.ChangeTypeViaCopy("item", "v", models.BigIntegerField(null=True)),
        safe.ChangeTypeViaCopy("item", "label", models.CharField(max_length=80, null=True)),
        safe.DropColumn("item", "v"),
        safe.Backfill("item", set={"v": "1"}, where="v IS NULL"),
        safe.RenameViaCopy("item", "label", "title", background=True),
        safe.ChangeTypeViaCopy("item", "v", models.BigIntegerField(null=True), background=True),
        safe.Backfill("item", set={"v": "1"}, where="v IS NULL", background=True),
        safe.RenameModelWithView("Item", "Thing"),
        safe.DropTable("some_old_table"),
    ]


def declared(operation, table="shop_item"):
    return operation.declared_statements("shop", state_with_item(table))


def declared_in(operation, state):
    return operation.declared_statements("shop", state)


@pytest.mark.parametrize("operation", sample_operations(), ids=lambda op: type(op).__name__)
def test_every_declared_lock_agrees_with_what_the_text_says(operation):
    """Two independent answers to "which lock does this take": the builder's declaration and the
    classifier reading the SQL. They must name the same mode (the classifier's table aside).
    Where the text alone cannot tell (SET NOT NULL after a validated CHECK is instant), the
    builder says more, never less."""
    for statement in declared(operation):
        if not isinstance(statement, Statement) or statement.lock is Lock.NONE:
            continue
        info = classify_script(statement.sql)
        if statement.sql.startswith("CREATE VIEW"):
            continue  # a view reads its table: the classifier sees a generic CREATE
        if "SET NOT NULL" in statement.sql or " TYPE " in statement.sql:
            assert info.work and not statement.work, statement  # planned to skip the scan / rewrite
        assert info.lock == statement.lock, (statement.sql, info.lock, statement.lock)
        assert (info.takes_lock and info.in_transaction) == (statement.how is How.BOUNDED), statement.sql


def test_declared_statements_name_their_lock_and_re_run_check():
    plan = declared(safe.AddColumnNullable("item", "n", models.IntegerField(null=True, db_index=True)))
    add, index = plan
    assert (add.lock, add.how, add.table) == (Lock.ACCESS_EXCLUSIVE, How.BOUNDED, "shop_item")
    assert add.skip_if == checks.ColumnExists("shop_item", "n")
    assert (index.lock, index.how) == (Lock.SHARE_UPDATE_EXCLUSIVE, How.CONCURRENT)
    assert index.index.startswith("shop_item_n_") and index.index in index.sql
    assert str(add.skip_if) == "column shop_item.n exists"


def test_a_foreign_key_is_replaced_in_one_transaction_then_validated():
    """ReplaceForeignKey (a database-level on_delete given up): never a moment without a constraint,
    and a re-run after the swap skips it (the add has no check of its own: the old one has its name)."""
    state = state_with_item("shop_item")
    state.add_model(ModelState("shop", "Box", [("id", models.BigAutoField(primary_key=True)),
                                               ("item", models.ForeignKey("shop.item", models.CASCADE))]))
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        swap, validate = safe.ReplaceForeignKey("box", "item").forwards_plan("shop", editor, state, state)
    drop, add = swap.statements
    assert "DROP CONSTRAINT" in drop.sql and add.sql.endswith("NOT VALID") and "ON DELETE" not in add.sql
    assert add.skip_if is None and isinstance(swap.skip_if, checks.ForeignKeyDeletes)
    assert str(swap.skip_if).endswith("has ON DELETE NO ACTION")
    assert validate.how is How.CONCURRENT
    for statement in (drop, add, validate):
        assert classify_script(statement.sql).lock == statement.lock, statement.sql


def test_the_lock_summary_comes_from_the_declared_statements():
    state = state_with_item("shop_item")
    summary = rules.lock_for(safe.CreateIndexConcurrently("item", models.Index(fields=["v"], name="i")), state, "shop")
    assert summary == "SHARE UPDATE EXCLUSIVE (reads and writes continue)"
    summary = rules.lock_for(safe.SetNotNull("item", "label", models.CharField(max_length=20)), state, "shop")
    assert summary.startswith("ACCESS EXCLUSIVE (instant;") and "SHARE UPDATE EXCLUSIVE" in summary
    assert rules.lock_for(safe.RemoveModelSafely("Item"), state, "shop") == "none (no SQL)"


def test_a_background_copy_is_declared_in_the_plan_and_moves_not_null_to_the_contract():
    """The mode is chosen when the plan is built: the plan holds the copy or its enqueueing, never
    both, and a NOT NULL that needs the copied rows is left to the contract step."""
    state = state_with_item("shop_item")
    state.models["shop", "item"].fields["label"] = models.CharField(max_length=20)
    inline = declared_in(safe.RenameViaCopy("item", "label", "title", background=False), state)
    queued = declared_in(safe.RenameViaCopy("item", "label", "title", background=True), state)
    (copy,) = [item for item in inline if isinstance(item, Batched)]
    (enqueue,) = [item for item in queued if isinstance(item, Batched)]
    assert not copy.background and copy.lock is Lock.ROW_EXCLUSIVE and copy.locks() == [("shop_item", copy.lock)]
    assert enqueue.background and enqueue.columns == ("title",) and enqueue.progress == "shop_item.rename.label.title"
    assert enqueue.lock is Lock.NONE and enqueue.locks() == [] and "enqueued" in enqueue.describe()
    assert any("SET NOT NULL" in s.sql for s in inline if isinstance(s, Statement))
    assert not any("SET NOT NULL" in s.sql for s in queued if isinstance(s, Statement))
    assert safe.RenameViaCopy("item", "label", "title", background=True).deconstruct()[2]["background"] is True
    assert "background" not in safe.RenameViaCopy("item", "label", "title").deconstruct()[2]


def test_collected_sql_of_a_background_copy_says_it_is_enqueued():
    item = Batched("backfill", "t", '"c" = 1', None, "fill-c", background=True, columns=("c",))
    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        run(editor, [item], label="test")
    (text,) = editor.collected_sql
    assert text.startswith("-- safemigrate: enqueued as background migration 'fill-c'") and '"c" = 1' in text
    assert isinstance(text, DeclaredSQL) and text.statement is item


class HoldsTheLock(safe.AddColumnNullable):
    """A (bad) subclass whose plan rewrites the table under ACCESS EXCLUSIVE."""

    def forwards_plan(self, app_label, schema_editor, from_state, to_state):
        return [sql.change_type_rewriting("shop_item", "v", "bigint", 200)]


def test_the_linter_judges_safemigrates_operations_by_their_declarations():
    state = state_with_item("shop_item")
    assert rules.findings(safe.AddColumnNullable("item", "n", models.IntegerField(null=True)), state, "shop") == []
    (finding,) = rules.findings(HoldsTheLock("item", "n", models.IntegerField(null=True)), state, "shop")
    assert finding.code == "SAFE140" and "rewrites the table" in finding.problem and finding.table == "shop_item"


@pytest.fixture
def scratch(transactional_db):
    table = unique_table()
    execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, v int)')
    yield table
    execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


def test_the_runner_skips_what_is_done_and_runs_a_transaction_whole(scratch):
    report = Report()
    plan = [sql.add_column(scratch, "w", "int"),
            Transaction("both or neither", [sql.add_column(scratch, "x", "int"), sql.add_column(scratch, "w", "int")])]
    with collecting(report), connection.schema_editor(atomic=False) as editor:
        run(editor, plan, label="test")
        run(editor, plan, label="test")  # a re-run: everything is there
    assert [r.skipped for r in report.steps] == [False, False, True, True]
    columns = {name for (name,) in execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", [scratch])}
    assert columns == {"id", "v", "w", "x"}


def test_a_failed_concurrent_build_leaves_no_invalid_index_and_calls_its_handler(scratch):
    execute(f'INSERT INTO "{scratch}" VALUES (1, 5), (2, 5)')
    seen = []

    def duplicate(exc):
        seen.append(exc)
        raise ValueError("explained")

    build = sql.create_index_concurrently(sql.index_definition(scratch, f"{scratch}_u", ["v"], unique=True),
                                          f"{scratch}_u", scratch, on_error=[("23505", duplicate)])
    with connection.schema_editor(atomic=False) as editor, pytest.raises(ValueError, match="explained"):
        run(editor, [build], label="test")
    assert len(seen) == 1
    assert execute("SELECT count(*) FROM pg_class WHERE relname = %s", [f"{scratch}_u"]) == [(0,)]


def test_collected_sql_still_knows_its_statement():
    from safemigrate.pg.statements import DeclaredSQL

    with connection.schema_editor(collect_sql=True, atomic=False) as editor:
        run(editor, [sql.add_column("t", "c", "int")], label="test")
    (comment, text) = editor.collected_sql
    assert comment.startswith("-- safemigrate: in its own transaction with lock_timeout")
    assert isinstance(text, DeclaredSQL) and text == 'ALTER TABLE "t" ADD COLUMN IF NOT EXISTS "c" int;'
    assert text.statement.lock is Lock.ACCESS_EXCLUSIVE


def test_index_exists_reads_a_bare_name_and_a_schema_qualified_one(scratch):
    """The archive's set-aside indexes are named ``"schema"."index"``: their drop is skipped once done."""
    index = f"{scratch}_v_idx"
    execute(f'CREATE INDEX "{index}" ON "{scratch}" (v)')
    qualified = sql.qualified("public", index)
    assert checks.IndexExists(index).holds(connection) and checks.IndexExists(qualified).holds(connection)
    drop = sql.drop_index_concurrently(qualified, scratch)
    run(connection.schema_editor(atomic=False), [drop], label="test")
    assert not checks.IndexExists(qualified).holds(connection) and not checks.IndexExists(index).holds(connection)
    with collecting(Report()) as report:
        run(connection.schema_editor(atomic=False), [drop], label="test")
    assert [record.skipped for record in report.steps] == [True], "a re-run skips the drop"
