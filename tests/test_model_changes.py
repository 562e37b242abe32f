"""Issue 21: every model change Django can express goes through ``makemigrations --safe`` correctly.

First the five changes the issue reports, then one history per class the
widened oracle grammar found (shrunk), each through the oracle: plain
Django's end state is the reference, the old code's writes are replayed
after expand, the old code updates rows the new code created, and
``makemigrations --check`` must be clean after contract. A refusal counts
only where it names the safe sequence. (Traffic and lock-wait bounds for the
five: ``tests/test_model_changes_traffic.py``.)
"""

import datetime
import uuid

import pytest
from django.db import migrations
from django.db.backends.postgresql.psycopg_any import NumericRange
from django.test import override_settings

from safemigrate import operations as safe
from safemigrate.planning.autodetector import SafeMigrationAutodetector, UnsafeChange
from tests.oracle.fixtures import PROGRESS, databases, oracle, passes, scratch_databases  # noqa: F401 (fixtures)
from tests.oracle.history import questioner
from tests.oracle.specs import DJANGO_61, C, F, Ix, M, U, X

NAME = ("name", F("char"))


def detect(before, after):
    """``makemigrations --safe``'s operations for one change: (expand, contract)."""
    from tests.oracle.specs import version_state

    detector = SafeMigrationAutodetector(version_state(before), version_state(after), questioner())
    changes = detector.changes(graph=_empty_graph(), trim_to_apps={"oracleapp"}, convert_apps={"oracleapp"})
    found = changes.get("oracleapp", [])
    expand = [m for m in found if getattr(m, "stage", None) != "contract"]
    contract = [m for m in found if getattr(m, "stage", None) == "contract"]
    return expand, contract


def _empty_graph():
    from django.db.migrations.graph import MigrationGraph

    return MigrationGraph()


# -- the five changes of the issue ----------------------------------------------------------


def test_auto_now_add_added_to_a_busy_model(oracle):
    """The one-off timezone.now default fills the rows and leaves the state, as in plain Django."""
    outcome = oracle((M("Item", (NAME,)),), (M("Item", (NAME, ("created", F("datetime", auto_now="auto_now_add")))),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
    expand = "\n".join(text for name, text in outcome.files.items() if "expand" in name)
    assert "preserve_default=False" in expand and "SetDatabaseDefault" in expand and "now()" in expand


@pytest.mark.parametrize("field", [
    F("datetime", auto_now="auto_now"), F("date", auto_now="auto_now_add"), F("time", auto_now="auto_now"),
    F("char", blank=True), F("text", blank=True),
], ids=["auto_now", "date-auto_now_add", "time-auto_now", "blank-char", "blank-text"])
def test_not_null_field_filled_by_djangos_schema_editor(oracle, field):
    """No default declared, yet plain Django fills the column (the current time, ''): so must --safe."""
    assert oracle((M("Item", (NAME,)),), (M("Item", (NAME, ("d", field))),), ignore=[PROGRESS]).status == "passed"


def test_unique_together_added_is_built_concurrently(oracle):
    before = (M("Item", (NAME, ("n", F("int")))),)
    after = (M("Item", (NAME, ("n", F("int"))), unique_together=(("name", "n"),)),)
    expand, contract = detect(before, after)
    assert [type(op) for op in expand[0].operations] == [safe.AlterUniqueTogetherConcurrently]
    assert expand[0].atomic is False and contract == []
    # Django's rows here are all unique: the oracle's writes give each row its own pair.
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_unique_together_only_removed_stays_djangos():
    before = (M("Item", (NAME, ("n", F("int"))), unique_together=(("name", "n"),)),)
    expand, _ = detect(before, (M("Item", (NAME, ("n", F("int")))),))
    assert [type(op) for op in expand[0].operations] == [migrations.AlterUniqueTogether]


def test_db_column_change_goes_through_the_rename_path(oracle):
    """The same choice as a field rename (``rename_column``): a view by default, a copy when asked."""
    before = (M("Item", (NAME, ("n", F("int", db_index=True)))),)
    after = (M("Item", (NAME, ("n", F("int", db_index=True, db_column="number")))),)
    expand, contract = detect(before, after)
    assert [type(op) for op in expand[0].operations] == [safe.RenameColumnViaView]
    assert [type(op) for op in contract[0].operations] == [safe.FinishRenameViaView]
    assert oracle(before, after, ignore=[PROGRESS]).status == "passed"
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        expand, contract = detect(before, after)
        assert [type(op) for op in expand[0].operations] == [safe.RenameViaCopy]
        assert [type(op) for op in contract[0].operations] == [safe.FinishRenameViaCopy]
        assert contract[0].operations[0].old_column == "n"
        assert oracle(before, after, ignore=[PROGRESS]).status == "passed"


@pytest.mark.parametrize("strategy", ["view", "copy"])
def test_db_column_change_with_other_attributes_in_one_edit(oracle, strategy):
    before = (M("Item", (NAME, ("n", F("int")))),)
    after = (M("Item", (NAME, ("n", F("int", null=True, db_index=True, db_column="number")))),)
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": strategy}):
        assert oracle(before, after, ignore=[PROGRESS]).status == "passed"


def test_db_column_change_with_a_type_change_in_one_edit_is_refused(oracle):
    """Found by the new test: the rename's trigger, cached in the sessions it fired in, broke after the swap."""
    before = (M("Item", (NAME, ("n", F("int")))),)
    after = (M("Item", (NAME, ("n", F("bigint", null=True, db_column="number")))),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "refused"
    assert "change db_column in one release (makemigrations --safe, deploy, migrate_contract), then the type" in \
        outcome.messages[0]


def test_db_column_removed_moves_the_column_back(oracle):
    before = (M("Item", (NAME, ("p", F("fk", to="Item", null=True, db_column="parent")))),)
    after = (M("Item", (NAME, ("p", F("fk", to="Item", null=True)))),)
    assert oracle(before, after, ignore=[PROGRESS]).status == "passed"


def test_db_table_change_leaves_a_view_for_the_old_code(oracle):
    before = (M("Tag"), M("Item", (NAME, ("tags", F("m2m", to="Tag")))))
    after = (M("Tag"), M("Item", (NAME, ("tags", F("m2m", to="Tag"))), db_table="legacy_items"))
    expand, contract = detect(before, after)
    assert [type(op) for op in expand[0].operations] == [safe.AlterModelTableWithView]
    # The model's table and its auto-created join table, each with its view until contract.
    assert sorted(op.old_table for op in contract[0].operations) == ["oracleapp_item", "oracleapp_item_tags"]
    assert oracle(before, after, ignore=[PROGRESS]).status == "passed"


def test_db_table_change_and_a_rename_in_one_release(oracle):
    """Found by the widened grammar: the table is renamed first, so the copy's trigger has the final name."""
    before = (M("Alpha", (("a", F("date", null=True, auto_now="auto_now_add")), ("c", F("float", default=1.5)))),)
    after = (M("Alpha", (("c", F("float", default=1.5)), ("d", F("date", null=True, auto_now="auto_now_add"))),
               db_table="legacy_alpha"),)
    assert oracle(before, after, ignore=[PROGRESS]).status == "passed"


def test_db_table_change_with_a_type_change_is_refused_with_the_sequence():
    before = (M("Item", (("n", F("int")),)),)
    after = (M("Item", (("n", F("bigint")),), db_table="items"),)
    with pytest.raises(UnsafeChange, match="change the field in one release .* then Meta.db_table in the next"):
        detect(before, after)


def test_db_table_change_with_a_comment_change_is_refused_with_the_sequence(oracle):
    """Found by the deep profile: Django changes a comment through ALTER COLUMN ... TYPE, refused on a viewed column."""
    before = (M("Alpha", (("b", F("float")),)),)
    after = (M("Alpha", (("b", F("float", db_comment="note")),), db_table="alphas"),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "change the field in one release" in outcome.messages[0] and "then Meta.db_table in the next" in \
        outcome.messages[0]


def test_generated_field_added(oracle):
    before = (M("Item", (("n", F("int")),)),)
    after = (M("Item", (("n", F("int")), ("double", F("generated", source="n", db_persist=not DJANGO_61)))),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    if DJANGO_61:
        assert outcome.status == "passed", outcome.report()  # VIRTUAL: a catalog change, as plain Django
    else:
        assert outcome.status == "refused"
        assert "db_persist=False" in outcome.messages[0] and "Backfill" in outcome.messages[0]


def test_stored_generated_field_refused_with_the_safe_sequence():
    before = (M("Item", (("n", F("int")),)),)
    after = (M("Item", (("n", F("int")), ("double", F("generated", source="n", db_persist=True)))),)
    with pytest.raises(UnsafeChange, match=r"rewrite the whole table under ACCESS EXCLUSIVE.*Safe sequence"):
        detect(before, after)


def test_generated_field_on_a_new_model_is_djangos(oracle):
    after = (M("Item", (("n", F("int")), ("double", F("generated", source="n")))),)
    assert oracle((M("Other"),), (M("Other"),) + after, ignore=[PROGRESS]).status == "passed"


# -- classes the widened grammar found --------------------------------------------------------

FOUND = [
    pytest.param((M("Alpha"),), (M("Alpha", (("e", F("bigint", db_default=5, db_comment="note")),)),),
                 id="db-comment-on-a-column-safemigrate-adds"),
    pytest.param((M("Alpha", (("a", F("int", default=5, db_index=True)),)),),
                 (M("Alpha", (("a", F("int", default=5, db_comment="it's a note")),)),),
                 id="db-comment-with-an-index-change"),
    pytest.param((M("Alpha", (("a", F("date", null=True, auto_now="auto_now_add")),)),),
                 (M("Alpha", (("d", F("date", null=True, auto_now="auto_now_add")),)),),
                 id="rename-auto-now-field-keeps-no-default"),
    pytest.param((M("Alpha"),), (M("Alpha", (("d", F("datetime", null=True, db_index=True, auto_now="auto_now")),)),),
                 id="nullable-indexed-auto-now-field-added"),
    pytest.param((M("Beta", (("b", F("smallint", null=True, unique=True, db_index=True)),),
                    constraints=(C("beta_b_min", "b", 0),), indexes=(Ix("beta_b_idx", ("b",)),)),),
                 (M("Beta", (("b", F("smallint", null=True, unique=True, db_index=True, db_column="col_p")),),
                    constraints=(C("beta_b_min", "b", 0),), indexes=(Ix("beta_b_idx", ("b",)),)),),
                 id="db-column-move-keeps-meta-indexes-and-constraints"),
    pytest.param((M("Alpha", (("a", F("int")), ("c", F("positive", null=True, unique=True))), pk="auto"),),
                 (M("Alpha", (("a", F("int")), ("c", F("positive", null=True, unique=True))), pk="auto",
                    db_table="legacy_alpha"), M("Beta", (("x", F("int", null=True)),), parent="Alpha")),
                 id="db-table-change-and-a-new-child-model-in-one-release"),
    pytest.param((M("Gamma", (("x", F("char", collation="C")),)),), (M("Gamma", (("x", F("text", collation="C")),)),),
                 id="in-place-type-change-keeps-the-collation"),
    pytest.param((M("Beta", (("a", F("fk", null=True, to="Beta", on_delete="PROTECT", db_constraint=False)),),
                    pk="auto"),),
                 (M("Beta", (("a", F("fk", null=True, to="Beta", on_delete="PROTECT", db_constraint=False)),)),),
                 id="bigint-key-widens-a-relation-without-constraint"),
    pytest.param((M("Beta", (), pk="auto"), M("Gamma", (("x", F("int", default=5)),), parent="Beta"),
                  M("Delta", (("d", F("fk", to="Gamma")),))),
                 (M("Beta", ()), M("Gamma", (("x", F("int", default=5)),), parent="Beta"),
                  M("Delta", (("d", F("fk", to="Gamma")),))),
                 id="bigint-key-of-a-multi-table-parent-moves-the-childs-key"),
]


@pytest.mark.parametrize("before, after", [
    (F("int", db_default=5), F("int", db_default=7)),
    (F("text", db_default="x"), F("email", db_default="a@b.cd", max_length=10)),
], ids=["same-type", "with-a-type-change"])
def test_db_default_changing_value_is_refused(oracle, before, after):
    """Found by the widened grammar: rows the new code inserted during the rollout got the old value."""
    outcome = oracle((M("Item", (("n", before),)),), (M("Item", (("n", after),)),), ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "first give the field a Python default equal to its current db_default" in outcome.messages[0]


def test_db_default_changing_value_with_python_defaults_on_both_sides_passes(oracle):
    before, after = F("int", default=5, db_default=5), F("int", default=7, db_default=7)
    assert oracle((M("Item", (("n", before),)),), (M("Item", (("n", after),)),), ignore=[PROGRESS]).status == "passed"


@pytest.mark.parametrize("before, after", FOUND)
def test_found_by_the_widened_grammar(oracle, before, after):
    assert passes(oracle(before, after, ignore=[PROGRESS]))


def test_order_with_respect_to_set_and_unset(oracle):
    """Found by the widened grammar: the old code's INSERTs failed on _order (NOT NULL, no default)."""
    alpha = M("Alpha", (("a", F("int", default=5)),))
    beta = M("Beta", (("p", F("fk", to="Alpha")),))
    outcome = oracle((alpha, beta), (alpha, M("Beta", beta.fields, order_wrt="p")), (alpha, beta), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_exclusion_constraint_on_an_existing_table_is_refused_with_the_sequence(oracle):
    """No lock-friendly form exists: its GiST index is built under ACCESS EXCLUSIVE (was passed through)."""
    before = (M("Booking", (("span", F("intrange", null=True)),)),)
    after = (M("Booking", (("span", F("intrange", null=True)),), constraints=(X("booking_span_excl", "span"),)),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "refused" and "give a new model the constraint when it is created" in outcome.messages[0]
    created = oracle((M("Other"),), (M("Other"),) + after, ignore=[PROGRESS])
    assert created.status == "passed", created.report()


def test_a_model_replaced_by_a_proxy_keeps_its_table_until_contract(oracle):
    """Found by the deep profile: the deleted concrete model was judged by the proxy of the same name
    (no SQL), so its table went at expand while the old code still wrote it."""
    outcome = oracle((M("Alpha", ()),), (M("Beta", ()), M("Alpha", (), proxy_of="Beta")), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_field_renamed_through_a_copy_on_a_renamed_model(oracle):
    """Found by the deep profile: deciding background mode looked the renamed model up by its new name."""
    when = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    before = (M("Alpha", (("a", F("datetime", default=when, auto_now="auto_now")),)),)
    after = (M("Beta", (("e", F("datetime", default=when, auto_now="auto_now")),)),)
    expand, contract = detect(before, after)
    assert [type(op) for op in expand[0].operations] == [safe.RenameModelWithView, safe.RenameViaCopy]
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


# -- 5.2-a: a unique char column moved, then unique dropped: plain Django keeps the _like index ----


@pytest.mark.parametrize("strategy", ["view", "copy"])
@pytest.mark.parametrize("move", ["rename", "db_column"])
@pytest.mark.parametrize("kind", ["char", "text"])
def test_unique_char_moved_then_unique_dropped_keeps_djangos_like_index(oracle, strategy, move, kind):
    """Found by the deep profile (seed 3101): Django names the ``_like`` index after the column when it
    builds it and, when unique goes, drops the name computed from the *new* column (IF EXISTS) — after a
    move that name misses, so plain Django keeps the old index. safemigrate's move must leave the same."""
    v1 = (M("Alpha", (("a", F(kind, unique=True)),)),)
    moved = ("b", F(kind, unique=True)) if move == "rename" else ("a", F(kind, unique=True, db_column="col_b"))
    dropped = (moved[0], F(kind, db_column=moved[1].db_column))
    v2, v3 = (M("Alpha", (moved,)),), (M("Alpha", (dropped,)),)
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": strategy}):
        outcome = oracle(v1, v2, v3, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("strategy", ["view", "copy"])
def test_indexed_char_renamed_made_unique_then_unindexed(oracle, strategy):
    """The sibling through Django's other path: db_index -> unique drops the ``_like`` index by column and
    builds it under the current column's name, which the later unique removal then finds."""
    versions = [(M("Alpha", (("a", F("char", db_index=True)),)),), (M("Alpha", (("b", F("char", db_index=True)),)),),
                (M("Alpha", (("b", F("char", unique=True)),)),), (M("Alpha", (("b", F("char")),)),)]
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": strategy}):
        outcome = oracle(*versions, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_unique_char_on_a_renamed_model_then_unique_dropped(oracle):
    """The name Django computes comes from the table too: after a model rename it misses the same way."""
    outcome = oracle((M("Alpha", (("a", F("char", unique=True)),)),), (M("Beta", (("a", F("char", unique=True)),)),),
                     (M("Beta", (("a", F("char")),)),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


# -- 5.2-b: a foreign key's db_column and db_constraint changed in one edit ---------------------


@pytest.mark.parametrize("strategy", ["view", "copy"])
@pytest.mark.parametrize("before, after", [
    (F("fk", to="Beta", null=True), F("fk", to="Beta", null=True, db_column="col_r", db_constraint=False)),
    (F("o2o", to="Beta", null=True), F("o2o", to="Beta", null=True, db_column="col_r", db_constraint=False)),
], ids=["foreign-key", "one-to-one"])
def test_foreign_key_db_column_and_db_constraint_in_one_edit(oracle, strategy, before, after):
    """Found by the deep profile: expand crashed with "ALTER action DROP CONSTRAINT cannot be performed on
    relation oracleapp_gamma" — the constraint's DDL went to the rename window's view."""
    beta = M("Beta", (("x", F("int", null=True)),))
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": strategy}):
        outcome = oracle((beta, M("Gamma", (("r", before),))), (beta, M("Gamma", (("r", after),))), ignore=[PROGRESS])
    assert passes(outcome), outcome.report()


def test_a_windows_table_is_found_in_every_statement_of_a_script():
    """Django's foreign key removal is one text of two statements; the DDL is the second."""
    from safemigrate.pg import windows
    from safemigrate.pg.views import Window

    window = {"oracleapp_gamma": Window("oracleapp_gamma", "oracleapp_gamma__sm_base", [("r_id", "col_r")])}
    script = 'SET CONSTRAINTS "fk" IMMEDIATE; ALTER TABLE "oracleapp_gamma" DROP CONSTRAINT "fk"'
    assert windows._is_ddl(script) and not windows._is_ddl("SET CONSTRAINTS ALL IMMEDIATE; SELECT 1")
    assert windows.plan(script, window).sql == \
        'SET CONSTRAINTS "fk" IMMEDIATE; ALTER TABLE "oracleapp_gamma__sm_base" DROP CONSTRAINT "fk"'
    assert windows.plan('SELECT 1; TRUNCATE "oracleapp_gamma"', window).sql == \
        'SELECT 1; TRUNCATE "oracleapp_gamma__sm_base"'


# -- 6.1-b: a model turned unmanaged over another model's table; 6.1-c: db_table change with a many-to-many removed


@pytest.mark.parametrize("before, after", [
    pytest.param((M("Alpha"), M("Beta")), (M("Alpha"), M("Beta", db_table="oracleapp_alpha", managed=False)),
                 id="turned-unmanaged-with-a-db-table"),
    pytest.param((M("Alpha"), M("Beta")), (M("Alpha"), M("Beta", db_table="oracleapp_alpha", managed=False,
                                                          db_table_comment="it's a table")),
                 id="turned-unmanaged-with-a-db-table-and-a-comment"),
    pytest.param((M("Alpha"), M("Gamma"), M("Beta", db_table="oracleapp_gamma", managed=False)),
                 (M("Alpha"), M("Gamma"), M("Beta", db_table="oracleapp_alpha", managed=False)),
                 id="unmanaged-moves-to-another-table"),
    pytest.param((M("Alpha"), M("Beta", db_table="oracleapp_alpha", managed=False)),
                 (M("Alpha", db_table="legacy_alpha"), M("Beta", db_table="legacy_alpha", managed=False)),
                 id="unmanaged-follows-a-renamed-table"),
])
def test_unmanaged_model_options_are_state_only(oracle, before, after):
    """Found by the deep profile (6.1-b): Django records only managed=False for a model turned unmanaged and
    leaves its db_table (and table comment) to the next makemigrations run, so --check was not clean after
    contract. --safe writes them at once, as Django's own operations: state only for an unmanaged model.

    Plain Django keeps the gap, so for a model turned unmanaged the oracle calls the history invalid, after
    finding safemigrate's side clean (its --check comes first and would fail the history)."""
    expand, contract = detect(before, after)
    beta = [op for op in expand[0].operations if op.name_lower == "beta"]
    assert beta and all(type(op).__module__.startswith("django.") for op in beta)
    assert not [op for m in contract for op in m.operations if getattr(op, "name_lower", None) == "beta"]
    outcome = oracle(before, after, ignore=[PROGRESS])
    if before[-1].managed:
        assert type(beta[0]) is migrations.AlterModelOptions and migrations.AlterModelTable in map(type, beta)
        assert outcome.status == "invalid", outcome.report()
        assert len(outcome.messages) == 1 and outcome.messages[0].startswith("plain Django's own state is not clean")
    else:
        assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("before, after", [
    pytest.param((M("Alpha", (("m", F("m2m", to="Alpha")),)),), (M("Alpha", db_table="legacy_alpha"),),
                 id="self-referencing-many-to-many-removed"),
    pytest.param((M("Beta"), M("Alpha", (("m", F("m2m", to="Beta")),))),
                 (M("Beta"), M("Alpha", db_table="legacy_alpha")),
                 id="many-to-many-to-another-model-removed"),
    pytest.param((M("Alpha", (("m", F("m2m", to="Alpha")), ("n", F("m2m", to="Beta")))), M("Beta")),
                 (M("Alpha", (("n", F("m2m", to="Beta")),), db_table="legacy_alpha"), M("Beta")),
                 id="one-many-to-many-removed-one-kept"),
])
def test_db_table_change_with_a_many_to_many_removed(oracle, before, after):
    """Found by the deep profile (6.1-c): the table rename, moved before the release's other steps, carried the
    removed field's join table along (its name follows the model's table) and left a view under the old name:
    DropForeignKeys looked for the join table's foreign keys under that name and found a view, and the new
    code's deletes of the rows they point at failed. The removal goes before the rename now: its join table
    keeps its name for the old code until contract and loses its foreign keys at expand."""
    expand, contract = detect(before, after)
    kinds = [type(op) for op in expand[0].operations]
    assert kinds.index(safe.DropForeignKeys) < kinds.index(safe.AlterModelTableWithView)
    dropped = [op.table_name for m in contract for op in m.operations if isinstance(op, safe.DropTable)]
    assert dropped == ["oracleapp_alpha_m"]


# -- 6.1-d: a nullable field becomes NOT NULL with a default only the field renders in SQL ----

RENDERED_DEFAULTS = [
    pytest.param("binary", b"x", id="binary-bytes"),
    pytest.param("json", "x", id="json-string"),
    pytest.param("json", 5, id="json-number"),
    pytest.param("json", "dict", id="json-dict"),
    pytest.param("array", (1, 2), id="array-constant"),
    pytest.param("array", "list", id="array-list"),
    pytest.param("hstore", {"a": "b"}, id="hstore-constant"),
    pytest.param("hstore", "dict", id="hstore-dict"),
    pytest.param("intrange", NumericRange(1, 5), id="intrange"),
    pytest.param("uuid", uuid.UUID(int=1), id="uuid-constant"),
    pytest.param("uuid", "uuid4", id="uuid-uuid4"),
    pytest.param("decimal", "1.50", id="decimal"),
    pytest.param("duration", datetime.timedelta(seconds=5), id="duration"),
    pytest.param("date", datetime.date(2020, 1, 1), id="date"),
    pytest.param("datetime", datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc), id="datetime"),
    pytest.param("time", datetime.time(12, 0), id="time"),
    pytest.param("ip", "10.0.0.1", id="ip"),
]


@pytest.mark.parametrize("kind, default", RENDERED_DEFAULTS)
def test_null_to_not_null_with_a_default_fills_the_old_codes_nulls(oracle, kind, default):
    """Found by the deep profile (6.1-d): BinaryField(null=True) -> BinaryField(default=b'x') was refused at
    contract ("1 rows hold NULL"): the fill sent only defaults of plain parameter types (bytes was not one),
    and sent a JSON column's "x" or 5 as they are ("invalid input syntax for type json"). A value only the
    field can render is filled through the ORM, as plain Django adapts it."""
    before = (M("Alpha", (("e", F(kind, null=True)),)),)
    after = (M("Alpha", (("e", F(kind, default=default)),)),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("before, after", [
    pytest.param((M("Alpha", (("m", F("m2m", to="Alpha")),)),),
                 (M("Alpha", (("m", F("m2m", to="Alpha")),), db_table="legacy_alpha"),),
                 id="self-referencing"),
    pytest.param((M("Alpha", (("m", F("m2m", to="Alpha")),)), M("Beta", (("m", F("m2m", to="Alpha")),))),
                 (M("Alpha", (("m", F("m2m", to="Alpha")),), db_table="legacy_alpha"),
                  M("Beta", (("m", F("m2m", to="Alpha")),))),
                 id="from-another-model"),
    pytest.param((M("Alpha", (("m", F("m2m", to="Alpha", through="Gamma")),)),
                  M("Gamma", (("a", F("fk", to="Alpha")), ("b", F("fk", to="Alpha"))))),
                 (M("Alpha", (("m", F("m2m", to="Alpha", through="Gamma")),), db_table="legacy_alpha"),
                  M("Gamma", (("a", F("fk", to="Alpha")), ("b", F("fk", to="Alpha"))))),
                 id="through-a-model"),
])
def test_db_table_change_with_a_many_to_many_kept(oracle, before, after):
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("null", [True, False], ids=["nullable", "not-null"])
@pytest.mark.parametrize("kind, default", RENDERED_DEFAULTS[:9])
def test_field_added_with_a_default_only_the_field_renders(oracle, kind, default, null):
    """The sibling edit: a nullable ArrayField(default=list) left the old code's rows NULL (no SQL twin for
    the empty array, as JSONField's dict / list had); now '{}' (and '' for an hstore)."""
    before = (M("Alpha", (("a", F("int", null=True)),)),)
    after = (M("Alpha", (("a", F("int", null=True)), ("e", F(kind, null=null, default=default)))),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_default_only_the_field_renders_is_filled_through_the_orm():
    """Bytes on a BinaryField stay a query parameter (psycopg sends bytea); JSON text needs the field."""
    json_expand, json_contract = detect((M("Alpha", (("e", F("json", null=True)),)),),
                                        (M("Alpha", (("e", F("json", default="x")),)),))
    assert [type(op) for op in json_contract[0].operations] == [safe.RunPythonBatched, safe.SetNotNull]
    binary_expand, binary_contract = detect((M("Alpha", (("e", F("binary", null=True)),)),),
                                            (M("Alpha", (("e", F("binary", default=b"x")),)),))
    assert [type(op) for op in binary_contract[0].operations] == [safe.Backfill, safe.SetNotNull]
    assert binary_contract[0].operations[0].params == [b"x"]


# -- classes 6.1-a (a DB_CASCADE relation removed) and 6.1-e (a self one-to-one gets its constraint) ---------

@pytest.mark.skipif(not DJANGO_61, reason="database-level on_delete is new in Django 6.1")
@pytest.mark.parametrize("kind", ["o2o", "fk"])
def test_db_cascade_relation_removed_is_refused_and_its_sequence_passes(oracle, kind):
    """Found by the deep profile (Django 6.1): the foreign key went at expand, so the old code's deletes
    (one DELETE of the parent, relying on ON DELETE CASCADE) left rows plain Django's database deleted.
    Kept until contract, it would delete rows under the new code that plain Django keeps: no single
    release serves both, so --safe refuses and names the sequence, which passes."""
    related = lambda on_delete: ("o", F(kind, to="Alpha", on_delete=on_delete))  # noqa: E731
    before, after = (M("Alpha"), M("Beta", (related("DB_CASCADE"),))), (M("Alpha"), M("Beta"))
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "on_delete=DB_CASCADE" in outcome.messages[0] and \
        "change on_delete to CASCADE in one release" in outcome.messages[0]
    outcome = oracle(before, (M("Alpha"), M("Beta", (related("CASCADE"),))), after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def _self_constraint_history(self_on_delete, on_delete, extra=()):
    """Beta's self one-to-one ``s`` gets its constraint in release 3; ``o`` points at Alpha."""
    def beta(db_constraint, *more):
        return M("Beta", (("s", F("o2o", to="Beta", null=True, on_delete=self_on_delete,
                                  db_constraint=db_constraint)),
                          ("o", F("o2o", to="Alpha", null=True, on_delete=on_delete)), *extra, *more))
    added = ("d", F("int", null=True))
    return (M("Alpha"), beta(False)), (M("Alpha"), beta(False, added)), (M("Alpha"), beta(True, added))


@pytest.mark.skipif(not DJANGO_61, reason="database-level on_delete is new in Django 6.1")
@pytest.mark.parametrize("extra", [(), (("c", F("array", null=True)),)], ids=["alone", "with-an-array-field"])
def test_self_one_to_one_gets_its_constraint_next_to_a_database_cascade(oracle, extra):
    """Found by the deep profile (Django 6.1): expand's new constraint met a Beta whose ``s`` pointed at a
    deleted Beta, which plain Django's old code had happened to delete before its migrate ran.

    Two causes, both the oracle's: its models' registry had no app config, so no model had reverse
    relations and ``delete()`` cascaded through none of them (the old code's delete of a Beta left the
    Beta pointing at it); and the models mix a Python-level on_delete (``s``) with a database-level one
    (``o``) in one chain, which Django 6.1's checks refuse (fields.E323) because a database cascade then
    leaves ``s`` dangling. The shrunk history is invalid; with one kind of on_delete it passes.
    """
    outcome = oracle(*_self_constraint_history("CASCADE", "DB_CASCADE", extra), ignore=[PROGRESS])
    assert outcome.status == "invalid" and "fields.E323" in outcome.messages[0], outcome.report()
    outcome = oracle(*_self_constraint_history("CASCADE", "CASCADE", extra), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.skipif(not DJANGO_61, reason="database-level on_delete is new in Django 6.1")
@pytest.mark.parametrize("kind", ["o2o", "fk"])
@pytest.mark.parametrize("before, after", [("DB_CASCADE", "CASCADE"), ("CASCADE", "DB_CASCADE"),
                                           ("DB_CASCADE", "PROTECT"), ("DB_SET_NULL", "SET_NULL")])
def test_on_delete_moves_between_python_and_database(oracle, kind, before, after):
    """Found with 6.1-a: leaving a database-level on_delete re-made the foreign key at expand, and the old
    code's deletes, counting on its ON DELETE, failed (NO ACTION) for the whole rollout."""
    field = lambda on_delete: ("o", F(kind, to="Alpha", null=True, on_delete=on_delete))  # noqa: E731
    outcome = oracle((M("Alpha"), M("Beta", (field(before),))), (M("Alpha"), M("Beta", (field(after),))),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
    if before.startswith("DB_") and not after.startswith("DB_"):
        expand, contract = detect(*[(M("Alpha"), M("Beta", (field(on_delete),))) for on_delete in (before, after)])
        assert [type(op) for op in contract[0].operations] == [safe.ReplaceForeignKey]


@pytest.mark.skipif(not DJANGO_61, reason="database-level on_delete is new in Django 6.1")
def test_on_delete_between_two_database_actions_is_refused_with_the_sequence():
    field = lambda on_delete: ("o", F("fk", to="Alpha", null=True, on_delete=on_delete))  # noqa: E731
    with pytest.raises(UnsafeChange, match="change on_delete to CASCADE in one release .* then to DB_SET_NULL"):
        detect((M("Alpha"), M("Beta", (field("DB_CASCADE"),))), (M("Alpha"), M("Beta", (field("DB_SET_NULL"),))))


# -- class 6.1-f (a field's type changes and its db_comment goes in the same edit) ---------------------------

@pytest.mark.parametrize("before, after", [
    (F("url", max_length=10, db_comment="it's a note"), F("char")),
    (F("int", db_comment="it's a note"), F("bigint")),
    (F("char", max_length=10, db_comment="old"), F("text", db_comment="new")),
])
def test_a_type_change_that_also_changes_db_comment_ends_with_djangos_comment(oracle, before, after):
    """Found by the deep profile (Django 6.1, seed 3103; fails the same on 5.2): URLField(max_length=10,
    db_comment=...) -> CharField() left the comment on safemigrate's column, which plain Django drops."""
    outcome = oracle((M("Alpha", (("e", before),)),), (M("Alpha", (("e", after),)),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


# -- the deep runs of 2026-12-03 (5.2 seed 3201, 6.1.3 seed 3202, 3,000 histories each) ----------------------

def test_db_default_removed_with_a_type_change_stays_until_contract(oracle):
    """5.2 seed 3201: PositiveIntegerField(db_default=5) -> IntegerField(): the old code inserts DEFAULT for
    the field, and the expand dropped the default with the CHECK (b >= 0): NOT NULL violation."""
    outcome = oracle((M("Alpha", (("b", F("positive", db_default=5)),)),), (M("Alpha", (("b", F("int")),)),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("persist", [True, False], ids=["stored", "virtual"])
@pytest.mark.parametrize("removed", [("d",), ("a", "d")], ids=["alone", "with-its-source"])
def test_a_removed_virtual_generated_field_is_dropped_and_a_stored_one_archived(oracle, persist, removed):
    """6.1.3 seed 3202: contract's archive ran DROP DEFAULT on a generated column (pg_attrdef holds its
    expression too): "column d ... is a generated column"."""
    if not DJANGO_61 and (not persist or removed == ("a", "d")):
        pytest.skip("Django 5.2 has no virtual generated columns on PostgreSQL, and its own migrate fails "
                    "removing a generated field with its source")
    fields = (("a", F("smallint")), ("d", F("generated", source="a", db_persist=persist)))
    before = (M("Alpha", fields),)
    after = (M("Alpha", tuple(item for item in fields if item[0] not in removed)),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_nulls_not_distinct_over_a_renamed_field_gets_no_second_null_from_the_oracle(oracle):
    """6.1.3 seed 3202, the oracle's: b renamed to d, which gets UNIQUE NULLS NOT DISTINCT. The oracle's old
    code wrote NULL into b twice; the second insert broke the constraint, as it would under plain Django
    once migrated. The rows it writes now keep a field of such a constraint non-NULL under its old name too
    (as they keep a unique field's values distinct)."""
    before = (M("Alpha", (("b", F("text", null=True)),)),)
    after = (M("Alpha", (("d", F("text", null=True)),), constraints=(U("alpha_d_u", ("d",), nulls_distinct=False),)),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.skipif(not DJANGO_61, reason="database-level on_delete is new in Django 6.1")
@pytest.mark.parametrize("on_delete", ["DB_SET_NULL", "DB_CASCADE"])
def test_db_constraint_dropped_from_a_database_on_delete_is_refused_with_the_sequence(oracle, on_delete):
    """6.1.3 seed 3202: db_constraint=False on a DB_SET_NULL relation. Kept until contract, the foreign key
    nulled rows during the rollout that plain Django's (gone at migrate) left alone; dropped at expand, the
    old code's deletes would leave what it counts on the database to clear: no release serves both."""
    def alpha(on_delete, **extra):
        return M("Alpha", (("b", F("o2o", null=True, to="Alpha", on_delete=on_delete, **extra)),))
    python_level = on_delete.removeprefix("DB_")
    outcome = oracle((alpha(on_delete),), (alpha(on_delete, db_constraint=False),), ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert f"change on_delete to {python_level} in one release" in outcome.messages[0]
    outcome = oracle((alpha(on_delete),), (alpha(python_level),), (alpha(python_level, db_constraint=False),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_duplicates_at_expand_are_the_datas_not_a_finding(oracle):
    """6.1.3 seed 3202, the oracle's: unique_together (a, b) over two booleans; the rows held (f, f) twice
    when expand built the index, and safemigrate stopped naming them. Plain Django migrated only after the
    old code's writes, whose delete removed one of them: safemigrate stopping loudly counts as a refusal."""
    before = (M("Alpha", (("c", F("bool")),)), M("Beta", (("a", F("bool")), ("b", F("bool", null=True)))))
    after = (M("Alpha", (("c", F("bool")),)),
             M("Beta", (("a", F("bool")), ("b", F("bool", null=True))), unique_together=(("a", "b"),)))
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "refused" and "Key (a, b)=(f, f) is duplicated" in outcome.messages[0], \
        outcome.report()


def test_a_narrowing_type_change_that_adds_db_default_gives_the_old_column_the_default(oracle):
    """6.1.3 seed 3302 (second run): PositiveBigIntegerField -> IntegerField(db_default=5): until the swap at
    contract the new code's inserts (DEFAULT for the field) landed in the old column, which had none."""
    outcome = oracle((M("Alpha", (("a", F("positivebig")),)),), (M("Alpha", (("a", F("int", db_default=5)),)),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_value_the_narrower_type_cannot_hold_at_expand_is_the_datas_not_a_finding(oracle):
    """5.2 seed 3301, the oracle's: a file field renamed, then narrowed to max_length=10; a row written
    under the old name held a longer text when expand copied, and safemigrate stopped naming it. Plain
    Django migrated after the old code's delete had removed that row."""
    outcome = oracle((M("Alpha", (("a", F("file", default="up/x.txt")),)),),
                     (M("Alpha", (("b", F("file", default="up/x.txt")),)),),
                     (M("Alpha", (("b", F("email", default="a@b.cd", max_length=10)),)),), ignore=[PROGRESS])
    assert outcome.status == "refused" and "which does not cast to varchar(10)" in outcome.messages[0], \
        outcome.report()


@pytest.mark.parametrize("other", [M("Beta", (), parent="Alpha"), M("Beta", (), proxy_of="Alpha")],
                         ids=["multi-table-child", "proxy"])
def test_deleting_a_child_or_proxy_keeps_the_parents_join_table(oracle, other):
    """5.2 seed 3301 / 6.1.3 seed 3302: deleting a multi-table child (or a proxy) of Alpha dropped Alpha's
    self many-to-many join table at contract (the child's fields include the parent's), and a proxy's
    removal took the join table's constraints and indexes at expand."""
    alpha = M("Alpha", (("a", F("m2m", to="Alpha")),))
    outcome = oracle((alpha, other), (alpha,), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_removed_field_with_an_exclusion_constraint_keeps_the_constraints_name_for_its_removal(oracle):
    """5.2 seed 3301: expand released the names of the removed column's indexes, the exclusion constraint's
    index among them (renaming it renames the constraint), and Django's RemoveConstraint then found none."""
    gamma = lambda *fields, **options: M("Gamma", fields, **options)  # noqa: E731
    outcome = oracle((gamma(("x", F("positivesmall", db_index=True)),
                            constraints=(X(name="gamma_x_excl", field="x", operator="="),)),), (gamma(),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_deleted_child_whose_parent_link_django_removes_first(oracle):
    """5.2 seed 3301: with a constraint added to the parent in the same edit, Django removes the child's
    parent link before the child; expand dropped NOT NULL on it: "column alpha_ptr_id is in a primary key"."""
    before = (M("Alpha", (("a", F("text")),)), M("Gamma", (), parent="Alpha"))
    after = (M("Alpha", (("a", F("text")),), constraints=(U("alpha_a_u", ("a",), nulls_distinct=False),)),)
    outcome = oracle(before, after, ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_deleting_a_proxy_leaves_the_join_table_of_its_concrete_model_alone(oracle):
    """5.2 seed 3301: the proxy's removal released the names of Alpha's join table's indexes and constraints."""
    alpha = M("Alpha", (("b", F("m2m", to="Alpha")),), pk="auto")
    outcome = oracle((alpha, M("Beta", (), proxy_of="Alpha")), (M("Alpha", (("b", F("m2m", to="Alpha")),)),),
                     ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_bigint_key_swap_keeps_nulls_not_distinct_on_the_referencing_columns_constraints(oracle):
    """5.2 seed 3401: the key swap rebuilt the self one-to-one's indexes on its shadow without NULLS NOT
    DISTINCT, so the constraints attached to them at the swap lost it."""
    def alpha(*constraints, **options):
        return M("Alpha", (("b", F("o2o", to="Alpha")), ("c", F("datetime"))), constraints=constraints, **options)
    first = U("alpha_b_c_u", ("b", "c"), nulls_distinct=False)
    outcome = oracle((alpha(first, pk="auto"),), (alpha(first),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


@pytest.mark.parametrize("meta", [
    {"indexes": (Ix("alpha_b_part", ("b",), condition=("gte", "e", 0)),)},
    {"indexes": (Ix("alpha_b_cover", ("b",), include=("e",)),)},
    {"indexes": (Ix("alpha_e_plus", expression=("plus", "e")),)},
    {"constraints": (U("alpha_b_part_u", ("b",), condition=("gte", "e", 0)),)},
    {"constraints": (U("alpha_b_cover_u", ("b",), include=("e",)),)},
    {"constraints": (U("alpha_e_plus_u", expression=("plus", "e")),)},
], ids=["index-condition", "index-include", "index-expression", "unique-condition", "unique-include",
        "unique-expression"])
def test_a_type_change_keeps_meta_objects_that_name_the_column_outside_their_fields(oracle, meta):
    """5.2 seed 3501: an index on b WHERE e >= 0, e int -> bigint, was lost at the swap: only Meta objects
    whose fields named e were rebuilt on the shadow column; dropping the old column dropped the rest."""
    def alpha(kind):
        return M("Alpha", (("b", F("char", max_length=10, null=True)), ("e", F(kind))), **meta)
    outcome = oracle((alpha("int"),), (alpha("bigint"),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_type_change_under_an_exclusion_constraint_is_refused_with_the_safe_sequence(oracle):
    """5.2 deep-run class: e int -> bigint under EXCLUDE USING gist (e WITH =) lost the constraint at the swap."""
    def alpha(kind):
        return M("Alpha", (("e", F(kind)),), constraints=(X("alpha_e_x", "e", "="),))
    outcome = oracle((alpha("int"),), (alpha("bigint"),), ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "exclusion constraint alpha_e_x" in outcome.messages[0] and "RemoveConstraint" in outcome.messages[0]


@pytest.mark.parametrize("meta", [
    {"indexes": (Ix("alpha_c_part", ("c",), condition=("isnull", "b", False)),)},
    {"indexes": (Ix("alpha_c_cover", ("c",), include=("b",)),)},
    {"indexes": (Ix("alpha_b_plus", expression=("plus", "b")),)},
    {"indexes": (Ix("alpha_b_desc", ("b", "c"), desc=True),)},
    {"constraints": (U("alpha_b_c_def", ("b", "c"), deferrable="DEFERRED"),)},
    {"indexes": (Ix("alpha_c_id", ("c", "id")),)},
    {"indexes": (Ix("alpha_c_id_part", ("c",), condition=("gte", "id", 5)),)},
], ids=["predicate", "include", "expression", "desc", "deferrable", "key-in-index", "key-in-predicate"])
def test_a_bigint_key_swap_keeps_every_index_that_mentions_a_referencing_column(oracle, meta):
    """The key swap rebuilt the referencing column's indexes from their key columns alone: an index that
    read b only in its WHERE (b_id IS NOT NULL), INCLUDE or an expression was lost with the int column,
    DESC and a unique constraint's DEFERRABLE were dropped on the way."""
    def alpha(pk):
        return M("Alpha", (("b", F("fk", to="Alpha", null=True)), ("c", F("int"))), pk=pk, **meta)
    outcome = oracle((alpha("auto"),), (alpha("bigauto"),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()


def test_a_bigint_key_swap_under_an_exclusion_constraint_is_refused_with_the_safe_sequence(oracle):
    """The swap would drop EXCLUDE USING gist (b_id WITH =) with the int column; it cannot come back unlocked."""
    def alpha(pk):
        return M("Alpha", (("b", F("fk", to="Alpha", null=True)),), pk=pk, constraints=(X("alpha_b_x", "b", "="),))
    outcome = oracle((alpha("auto"),), (alpha("bigauto"),), ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "exclusion constraint alpha_b_x" in outcome.messages[0] and "RemoveConstraint" in outcome.messages[0]


def test_a_new_field_on_a_removed_fields_column_is_refused_with_the_safe_sequence(oracle):
    """6.1.3 seed 3602: c (db_column col_q) removed and e added on col_q in one edit. safemigrate's expand
    found the column there (ADD COLUMN IF NOT EXISTS) and its contract then dropped it with c: no column at
    all, where plain Django recreates it empty. One column cannot be both fields during the rollout."""
    before = M("Alpha", (("c", F("positivesmall", db_column="col_q")),))
    after = M("Alpha", (("e", F("positivesmall", null=True, unique=True, db_column="col_q")),))
    outcome = oracle((before,), (after,), ignore=[PROGRESS])
    assert outcome.status == "refused", outcome.report()
    assert "takes column 'col_q', which is c's" in outcome.messages[0] and "Safe sequence" in outcome.messages[0]


def test_a_bigint_key_swap_keeps_the_comment_of_a_referencing_column(oracle):
    """5.2 seed 3801 (review run): the swap renamed a bigint shadow made without the column's comment into
    the foreign key column's place; plain Django's ALTER ... TYPE keeps the comment."""
    def alpha(pk):
        return M("Alpha", (("c", F("o2o", to="Alpha", db_comment="it's a note")),), pk=pk)
    outcome = oracle((alpha("auto"),), (alpha("bigauto"),), ignore=[PROGRESS])
    assert outcome.status == "passed", outcome.report()
