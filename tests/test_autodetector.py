"""makemigrations --safe: model states in, expand and contract operations out."""

import uuid

import pytest
from django.db import migrations, models
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.questioner import MigrationQuestioner
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.test import override_settings

from safemigrate import operations as safe
from safemigrate.planning.autodetector import SafeMigrationAutodetector, UnsafeChange
from safemigrate.stages import Stage, migration_stage


def item(*fields, name="Item", **options):
    return ModelState("shop", name, [("id", models.BigAutoField(primary_key=True)), *fields], options=options)


def state(*model_states):
    project = ProjectState()
    for model_state in model_states:
        project.add_model(model_state)
    return project


def detect(before, after, **answers):
    questioner = MigrationQuestioner(defaults={"ask_rename": True, "ask_rename_model": True, **answers})
    detector = SafeMigrationAutodetector(state(*before), state(*after), questioner)
    graph = MigrationGraph()
    graph.add_node(("shop", "0001_initial"), None)
    return detector.changes(graph=graph)["shop"]


def ops(migration):
    return [(type(op).__name__, op.deconstruct()[2] if type(op).__module__.startswith("safemigrate") else None)
            for op in migration.operations]


def names(migration):
    return [type(op).__name__ for op in migration.operations]


BASE = (("name", models.CharField(max_length=50)),)


def two_stages(before, after, **answers):
    migrations_out = detect(before, after, **answers)
    assert len(migrations_out) == 2, [m.name for m in migrations_out]
    expand, contract = migrations_out
    assert migration_stage(expand) is Stage.EXPAND and migration_stage(contract) is Stage.CONTRACT
    assert expand.name.startswith("0002_expand_") and contract.name.startswith("0003_contract_")
    assert contract.dependencies == [("shop", expand.name)]
    return expand, contract


def test_add_not_null_field_with_constant_default():
    expand, contract = two_stages([item(*BASE)], [item(*BASE, ("currency", models.CharField(max_length=3, default="EUR")))])
    assert names(expand) == ["AddColumnNullable"]
    assert expand.operations[0].field.default == "EUR" and not expand.operations[0].field.null
    assert names(contract) == ["DropColumnDefault"]
    assert expand.name == "0002_expand_item_currency"


def test_add_field_with_db_default_needs_no_contract():
    out = detect([item(*BASE)], [item(*BASE, ("flag", models.BooleanField(db_default=False)))])
    assert [names(m) for m in out] == [["AddColumnNullable"]]


def test_add_field_with_callable_default_sql_equivalent():
    expand, contract = two_stages(
        [item(*BASE)], [item(*BASE, ("token", models.UUIDField(default=uuid.uuid4, unique=True)))])
    assert names(expand) == ["AddColumnNullable", "SetDatabaseDefault", "Backfill"]
    assert expand.operations[0].field.null and expand.operations[0].field.unique
    assert expand.operations[1].expression == "gen_random_uuid()"
    assert expand.operations[2].set == {"token": "gen_random_uuid()"}
    assert expand.atomic is False
    assert names(contract) == ["SetNotNull", "DropColumnDefault"]
    assert not contract.operations[0].field.null and contract.operations[0].stage is Stage.CONTRACT


def some_code():
    return "x"


def test_add_field_with_other_callable_default_fills_from_python():
    expand, contract = two_stages([item(*BASE)], [item(*BASE, ("code", models.CharField(max_length=5, default=some_code)))])
    assert names(expand) == ["AddColumnNullable", "RunPythonBatched"]
    assert names(contract) == ["RunPythonBatched", "SetNotNull"]


def test_add_nullable_field_and_new_model_are_left_as_django_makes_them():
    out = detect([item(*BASE)], [item(*BASE, ("note", models.TextField(null=True))),
                                  item(("code", models.CharField(max_length=5)), name="Coupon")])
    assert [names(m) for m in out] == [["CreateModel", "AddField"]]


def test_remove_field():
    expand, contract = two_stages([item(*BASE, ("note", models.TextField()))], [item(*BASE)])
    assert ops(expand) == [("RemoveFieldSafely", {"model_name": "item", "name": "note"})]
    assert names(contract) == ["DropColumn"]
    assert contract.operations[0].column_name == "note"
    assert isinstance(contract.operations[0].field, models.TextField)


def test_delete_model():
    expand, contract = two_stages([item(*BASE), item(name="Coupon")], [item(*BASE)])
    assert ops(expand) == [("ReleaseNames", {"table_name": "shop_coupon"}), ("RemoveModelSafely", {"name": "Coupon"}),
                           ("DropForeignKeys", {"table_name": "shop_coupon"})]
    assert ops(contract) == [("DropTable", {"table_name": "shop_coupon"})]


def test_rename_field():
    expand, contract = two_stages([item(*BASE)], [item(("full_name", models.CharField(max_length=50)))])
    assert ops(expand) == [("RenameFieldViaView", {"model_name": "item", "old_name": "name", "new_name": "full_name"})]
    assert ops(contract) == [("FinishRenameViaView", {"model_name": "item", "old_column": "name",
                                                      "new_column": "full_name"})]


def test_rename_field_through_a_copy_when_asked():
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        expand, contract = two_stages([item(*BASE)], [item(("full_name", models.CharField(max_length=50)))])
    assert ops(expand) == [("RenameViaCopy", {"model_name": "item", "old_name": "name", "new_name": "full_name"})]
    assert ops(contract) == [("FinishRenameViaCopy", {"model_name": "item", "old_name": "name", "new_name": "full_name"})]


def test_rename_model():
    expand, contract = two_stages([item(*BASE)], [item(*BASE, name="Product")])
    assert ops(expand) == [("RenameModelWithView", {"old_name": "Item", "new_name": "Product"})]
    assert ops(contract) == [("DropCompatibilityView", {"old_table": "shop_item", "new_table": "shop_product"})]


def test_rename_model_keeping_db_table_is_state_only():
    out = detect([item(*BASE, db_table="legacy")], [item(*BASE, name="Product", db_table="legacy")])
    assert [names(m) for m in out] == [["RenameModel"]]


def test_widening_type_change_swaps_at_expand():
    """int -> bigint: the new type holds every value the old code writes, so both share it from expand on."""
    out = detect([item(("points", models.IntegerField()))], [item(("points", models.BigIntegerField()))])
    assert [names(m) for m in out] == [["ChangeTypeViaCopy", "FinishChangeTypeViaCopy"]]
    assert migration_stage(out[0]) is Stage.EXPAND and out[0].operations[1].stage == "expand"
    assert out[0].operations[1].deconstruct()[2]["stage"] == "expand"


def test_narrowing_type_change_swaps_at_contract():
    """bigint -> int: the old code may still write values only bigint holds, so the column keeps it until contract."""
    expand, contract = two_stages([item(("points", models.BigIntegerField()))], [item(("points", models.IntegerField()))])
    assert names(expand) == ["ChangeTypeViaCopy"] and names(contract) == ["FinishChangeTypeViaCopy"]
    assert "stage" not in contract.operations[0].deconstruct()[2]


@pytest.mark.parametrize("before, after, sequence", [
    (models.BigIntegerField(null=True), models.DecimalField(max_digits=10, decimal_places=2, null=True),
     r"numeric\(21, 2\) first"),
    (models.IntegerField(), models.CharField(max_length=20), "add a new field of the new type"),
])
def test_type_change_no_type_holds_both_ways_is_refused_with_the_sequence(before, after, sequence):
    """Issue 9: a type that neither version's values all fit would round or cut them during the rollout."""
    with pytest.raises(UnsafeChange, match=sequence):
        detect([item(("n", before))], [item(("n", after))])


def test_change_type_in_place():
    out = detect([item(*BASE)], [item(("name", models.CharField(max_length=200)))])
    assert [names(m) for m in out] == [["ChangeTypeViaCopy"]]


def test_nullable_to_not_null_backfills_the_default_then_sets_not_null_in_contract():
    expand, contract = two_stages([item(("note", models.TextField(null=True)))],
                                  [item(("note", models.TextField(default="")))])
    assert names(expand) == ["SeparateDatabaseAndState", "Backfill"]
    assert expand.operations[1].set == {"note": "%s"} and expand.operations[1].params == [""]
    assert expand.operations[1].where == '"note" IS NULL'
    assert expand.operations[0].state_operations[0].field.null
    assert names(contract) == ["Backfill", "SetNotNull"] and not contract.operations[1].field.null
    assert ".final-fill." in contract.operations[0].name


def test_not_null_to_nullable_is_one_expand_step():
    out = detect([item(*BASE)], [item(("name", models.CharField(max_length=50, null=True)))])
    assert [names(m) for m in out] == [["DropNotNull"]]


@pytest.mark.parametrize("after, expected", [
    (item(*BASE, indexes=[models.Index(fields=["name"], name="item_name_idx")]), "CreateIndexConcurrently"),
    (item(*BASE, constraints=[models.UniqueConstraint(fields=["name"], name="item_name_uniq")]), "AddUniqueConstraint"),
    (item(*BASE, constraints=[models.CheckConstraint(condition=models.Q(name__gt=""), name="item_name_chk")]),
     "AddCheckConstraint"),
    (item(("name", models.CharField(max_length=50, db_index=True))), "AlterFieldIndexes"),
    (item(("name", models.CharField(max_length=50, unique=True))), "AlterFieldIndexes"),
    (item(*BASE, ("parent", models.ForeignKey("shop.Item", models.CASCADE, null=True))), "AddForeignKey"),
])
def test_indexes_and_constraints_use_the_safe_operations(after, expected):
    out = detect([item(*BASE)], [after])
    assert [names(m) for m in out] == [[expected]]
    assert out[0].atomic is False


def test_autofield_to_bigautofield_primary_key():
    before = ModelState("shop", "Item", [("id", models.AutoField(primary_key=True))])
    after = ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))])
    expand, contract = two_stages([before], [after])
    assert names(expand) == ["ChangePrimaryKeyToBigint"] and expand.operations[0].name == "item"
    assert names(contract) == ["FinishChangePrimaryKeyToBigint"]


def test_other_primary_key_type_changes_stop_with_manual_steps():
    before = ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))])
    after = ModelState("shop", "Item", [("id", models.CharField(max_length=10, primary_key=True))])
    with pytest.raises(UnsafeChange, match="primary key.*Manual steps"):
        detect([before], [after])


def test_field_into_relation_stops_with_manual_steps():
    with pytest.raises(UnsafeChange, match="relation"):
        detect([item(("owner", models.IntegerField()))],
               [item(("owner", models.ForeignKey("shop.Item", models.CASCADE)))])


def test_altering_a_foreign_key_to_nullable_works():
    parent = item(name="Parent")
    before = item(("parent", models.ForeignKey("shop.Parent", models.CASCADE)))
    after = item(("parent", models.ForeignKey("shop.Parent", models.CASCADE, null=True)))
    out = detect([parent, before], [parent, after])
    assert [names(m) for m in out] == [["DropNotNull"]]


def test_generated_files_carry_stage_atomic_and_notes():
    expand, contract = two_stages([item(*BASE, ("note", models.TextField()))], [item(*BASE)])
    from safemigrate.planning.writer import StagedMigrationWriter

    expand_text = StagedMigrationWriter(expand).as_string()
    contract_text = StagedMigrationWriter(contract).as_string()
    assert "# Expand:" in expand_text and "read and write item.note" in expand_text
    assert 'stage = "contract"' in contract_text
    namespace = {}
    exec(compile(contract_text, "contract", "exec"), namespace)
    assert namespace["Migration"].stage == "contract"
    assert MigrationWriter(expand).as_string()  # Django's writer still works on them


def test_non_atomic_files_say_atomic_false_once():
    """Django 6.1's own writer writes ``atomic = False`` too; the file must not say it twice."""
    from safemigrate.planning.writer import StagedMigrationWriter

    out = detect([item(*BASE)], [item(*BASE, ("code", models.CharField(max_length=5, null=True, db_index=True)))])
    non_atomic = [m for m in out if m.atomic is False]
    assert non_atomic
    for migration in non_atomic:
        text = StagedMigrationWriter(migration).as_string()
        assert text.count("atomic = False") == 1, text
        namespace = {}
        exec(compile(text, migration.name, "exec"), namespace)
        assert namespace["Migration"].atomic is False


def test_unanswered_rename_is_warned_about():
    messages = []
    questioner = MigrationQuestioner(defaults={"ask_rename": False})
    questioner.log = messages.append
    detector = SafeMigrationAutodetector(state(item(*BASE)), state(item(("full_name", models.CharField(max_length=50)))),
                                         questioner)
    graph = MigrationGraph()
    graph.add_node(("shop", "0001_initial"), None)
    expand, contract = detector.changes(graph=graph)["shop"]
    assert "DropColumn" in names(contract)
    assert len(messages) == 1 and "If this is a rename" in messages[0] and "drops name and its data" in messages[0]


def test_django_operations_are_kept_out_of_non_atomic_migrations():
    before = [item(*BASE)]
    after = [item(*BASE, ("note", models.TextField(null=True)),
                  indexes=[models.Index(fields=["name"], name="item_name_idx")])]
    first, second = detect(before, after)
    assert names(first) == ["AddField"] and first.atomic is not False
    assert names(second) == ["CreateIndexConcurrently"] and second.atomic is False
    assert second.dependencies == [("shop", first.name)]
    assert first.dependencies == [("shop", "0001_initial")]


def test_default_with_percent_travels_as_a_parameter():
    """Issue 9 item 7: '100%' is data, never part of the SQL text."""
    expand, contract = two_stages([item(("rate", models.CharField(max_length=10, null=True)))],
                                  [item(("rate", models.CharField(max_length=10, default="100%")))])
    fill = expand.operations[-1]
    assert fill.set == {"rate": "%s"} and fill.params == ["100%"]
    assert "100%" not in fill.where


def test_generated_backfills_get_names_unique_to_their_migration():
    """Issue 9 item 1: the same change made again later must not find the earlier progress."""
    before, after = [item(("note", models.TextField(null=True)))], [item(("note", models.TextField(default="")))]
    first, second = two_stages(before, after)[0], two_stages(before, after)[0]
    assert first.operations[-1].name != second.operations[-1].name


def test_in_place_type_change_keeps_the_other_changes_of_the_same_edit():
    """Issue 9 item 2: widening plus null=True plus unique=True in one edit."""
    out = detect([item(("code", models.CharField(max_length=50)))],
                 [item(("code", models.CharField(max_length=100, null=True, unique=True)))])
    assert [names(m) for m in out] == [["ChangeTypeViaCopy", "DropNotNull", "AlterFieldIndexes"]]
    change, drop, indexes = out[0].operations
    assert change.field.max_length == 100 and not change.field.null and not change.field.unique
    assert drop.field.null and not drop.field.unique
    assert indexes.field.unique and indexes.field.null and indexes.field.max_length == 100


def test_shadow_type_change_to_not_null_fills_the_default_before_not_null():
    expand, contract = two_stages([item(("qty", models.BigIntegerField(null=True)))],
                                  [item(("qty", models.IntegerField(default=0)))])
    assert names(expand) == ["ChangeTypeViaCopy"]
    assert names(contract) == ["FinishChangeTypeViaCopy", "Backfill", "SetNotNull"]
    assert contract.operations[1].params == [0]
    expand, contract = two_stages([item(("qty", models.IntegerField(null=True)))],
                                  [item(("qty", models.BigIntegerField(default=0)))])
    assert names(expand) == ["ChangeTypeViaCopy", "FinishChangeTypeViaCopy"]
    assert names(contract) == ["Backfill", "SetNotNull"]


def test_removing_an_m2m_of_a_model_with_a_custom_table_drops_the_real_through_table():
    """Issue 9 item 10: the through table's name derives from the model's db_table."""
    tag = item(name="Tag")
    before = item(("tags", models.ManyToManyField("shop.Tag")), db_table="legacy_items")
    expand, contract = two_stages([tag, before], [tag, item(db_table="legacy_items")])
    assert ops(contract) == [("DropTable", {"table_name": "legacy_items_tags"})]
    assert ops(expand)[-1] == ("DropForeignKeys", {"table_name": "legacy_items_tags"})


@pytest.mark.parametrize("new_field, fill", [
    (models.UUIDField(default=uuid.uuid4), "RunPythonBatched"),
    (models.UUIDField(db_default=models.Value("00000000-0000-0000-0000-000000000000")), "Backfill"),
])
def test_nullable_to_not_null_with_callable_or_db_default_fills_the_nulls(new_field, fill):
    """Found by the oracle: only constant defaults were filled, so SetNotNull met NULLs at contract."""
    *expand, contract = detect([item(("token", models.UUIDField(null=True)))], [item(("token", new_field))])
    expand_ops = [op for migration in expand for op in migration.operations]
    assert type(expand_ops[-1]).__name__ == fill and names(contract) == [fill, "SetNotNull"]
    if fill == "Backfill":
        assert expand_ops[-1].set == {"token": "DEFAULT"}
        assert [type(op).__name__ for op in expand_ops] == ["AlterField", "Backfill"]  # the default, then the fill


@pytest.mark.parametrize("before, after, message", [
    (models.ForeignKey("shop.Item", models.CASCADE), models.IntegerField(), "into or out of a relation"),
    (models.ForeignKey("shop.Item", models.CASCADE), models.ForeignKey("shop.Other", models.CASCADE),
     "foreign key moves"),
    (models.ManyToManyField("shop.Item"), models.ManyToManyField("shop.Other"), "many-to-many"),
])
def test_relation_changes_the_old_code_cannot_follow_are_refused(before, after, message):
    """Found by the oracle: these were generated as plain AlterFields and broke the old code."""
    other = item(name="Other")
    with pytest.raises(UnsafeChange, match=message):
        detect([other, item(("link", before))], [other, item(("link", after))])


def test_renaming_an_m2m_or_a_model_with_one_is_refused_unless_the_table_stays():
    tag = item(name="Tag")
    with pytest.raises(UnsafeChange, match="db_table='shop_item_tags'"):
        detect([tag, item(("tags", models.ManyToManyField("shop.Tag")))],
               [tag, item(("labels", models.ManyToManyField("shop.Tag")))])
    # The two releases the message names: pin the table (no SQL), then rename (state-only).
    pinned = item(("tags", models.ManyToManyField("shop.Tag", db_table="shop_item_tags")))
    assert [names(m) for m in detect([tag, item(("tags", models.ManyToManyField("shop.Tag")))], [tag, pinned])] \
        == [["AlterField"]]
    out = detect([tag, pinned], [tag, item(("labels", models.ManyToManyField("shop.Tag", db_table="shop_item_tags")))])
    assert [names(m) for m in out] == [["RenameField"]]
    with pytest.raises(UnsafeChange, match="auto-created many-to-many"):
        detect([tag, item(("tags", models.ManyToManyField("shop.Tag")))],
               [tag, item(("tags", models.ManyToManyField("shop.Tag")), name="Thing")])


def test_deleting_a_model_keeps_what_guards_its_table_until_contract():
    """Django removes a deleted model's unique_together (and, from 6.1, each index and
    constraint) before the model. The old code still writes that table during the
    rollout, so those removals must not reach the database before DropTable."""
    doomed = item(*BASE, ("code", models.CharField(max_length=5)), name="Doomed",
                  unique_together={("name", "code")},
                  indexes=[models.Index(fields=["code"], name="doomed_code_idx")],
                  constraints=[models.UniqueConstraint(fields=["code"], name="doomed_code_u")])
    expand, contract = two_stages([item(*BASE), doomed], [item(*BASE)])
    removals = (migrations.RemoveIndex, migrations.RemoveConstraint, migrations.AlterUniqueTogether)
    assert not [op for op in expand.operations if isinstance(op, removals)]
    assert names(contract) == ["DropTable"]


def test_rename_of_a_nullable_field_with_db_default_is_refused_when_it_must_copy():
    """Found by the oracle: the new code's explicit NULL came back as the old column's default.

    Only the copy has two columns to confuse; the view has one."""
    before = item(("a", models.BigIntegerField(null=True, db_default=5)))
    after = item(("b", models.BigIntegerField(null=True, db_default=5)))
    assert "RenameFieldViaView" in names(detect([before], [after])[0])
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        with pytest.raises(UnsafeChange, match="replace db_default with a Python default"):
            detect([before], [after])
        # Without null=True the new code cannot write NULL: the rename goes ahead.
        before = item(("a", models.BigIntegerField(db_default=5)))
        after = item(("b", models.BigIntegerField(db_default=5)))
        assert "RenameViaCopy" in names(detect([before], [after])[0])


def test_fields_added_to_a_model_created_in_the_same_migration_stay_plain():
    """Found by the oracle: Django may add a new model's relations after its CreateModel;
    the table is new and empty, so a NOT NULL one-to-one needs no expand/contract."""
    alpha, beta = item(name="Alpha"), item(("b", models.IntegerField()), name="Beta")
    gamma = item(("a", models.OneToOneField("shop.Alpha", models.CASCADE)), name="Gamma")
    beta_unique = item(("b", models.IntegerField()), name="Beta",
                       constraints=[models.UniqueConstraint(fields=["b"], name="beta_b_u")])
    out = detect([alpha, beta], [alpha, beta_unique, gamma])
    operations = [op for migration in out for op in migration.operations]
    created = [op for op in operations if type(op).__name__ == "CreateModel"]
    assert created and created[0].name == "Gamma"
    added = [op for op in operations if getattr(op, "model_name_lower", None) == "gamma"]
    assert all(type(op).__module__.startswith("django") for op in added), added


def test_nullable_field_with_callable_default_fills_existing_and_old_code_rows():
    expand, contract = two_stages([item(*BASE)], [item(*BASE, ("data", models.JSONField(null=True, default=dict)))])
    assert names(expand) == ["AddColumnNullable", "SetDatabaseDefault", "Backfill"]
    assert expand.operations[1].expression == "'{}'::jsonb"
    assert names(contract) == ["DropColumnDefault"]


def test_a_primary_key_changing_to_another_type_than_bigint_is_refused_with_manual_steps():
    before = ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))])
    after = ModelState("shop", "Item", [("id", models.UUIDField(primary_key=True))])
    with pytest.raises(UnsafeChange, match="only int -> bigint has a zero-downtime strategy"):
        detect([before], [after])
    # AutoField -> BigAutoField is the int -> bigint strategy, not a refusal.
    before = ModelState("shop", "Item", [("id", models.AutoField(primary_key=True))])
    after = ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True))])
    assert names(detect([before], [after])[0]) == ["ChangePrimaryKeyToBigint"]


def test_foreign_key_becoming_not_null_with_a_default_is_filled_with_it():
    """A foreign key's get_default() needs its target model, which a migration state leaves
    unresolved: the fill takes the raw default (this crashed makemigrations --safe)."""
    parent = item(name="Parent")
    before = item(("parent", models.ForeignKey("shop.Parent", models.CASCADE, null=True)))
    after = item(("parent", models.ForeignKey("shop.Parent", models.CASCADE, default=1)))
    expand, contract = two_stages([parent, before], [parent, after])
    fills = [op for op in [*expand.operations, *contract.operations] if type(op).__name__ == "Backfill"]
    assert fills and all(op.params == [1] for op in fills)
    assert names(contract)[-1] == "SetNotNull"


# -- BACKGROUND_MIN_ROWS: the file says which mode runs ----------------------------------------


@pytest.fixture
def big_item(transactional_db):
    """A table named like the model's, whose catalog estimate (reltuples) is 200 rows."""
    from tests.utils import execute

    execute('CREATE TABLE "shop_item" (id bigserial PRIMARY KEY, name varchar(50), points integer)')
    execute('INSERT INTO "shop_item" (name, points) SELECT i::text, i FROM generate_series(1, 200) i')
    execute('ANALYZE "shop_item"')
    yield
    execute('DROP TABLE IF EXISTS "shop_item" CASCADE')


@pytest.mark.parametrize("threshold, background", [(200, True), (201, None), (None, None)])
def test_copies_of_a_table_at_or_above_background_min_rows_are_written_as_background(big_item, threshold,
                                                                                       background):
    from django.test import override_settings

    # The copy-based rename (RENAME_STRATEGY "copy"); the default, the view, copies nothing at any size.
    with override_settings(SAFEMIGRATE={"BACKGROUND_MIN_ROWS": threshold, "RENAME_STRATEGY": "copy"}):
        expand, contract = two_stages([item(*BASE)], [item(("full_name", models.CharField(max_length=50)))])
    assert names(expand) == ["RenameViaCopy"] and expand.operations[0].background is background
    source = MigrationWriter(expand).as_string()
    assert ("background=True" in source) is bool(background)
    with override_settings(SAFEMIGRATE={"BACKGROUND_MIN_ROWS": threshold}):
        expand, _ = two_stages([item(*BASE)], [item(("full_name", models.CharField(max_length=50)))])
    assert names(expand) == ["RenameFieldViaView"] and not hasattr(expand.operations[0], "background")


def test_a_widening_copied_in_the_background_swaps_at_contract(big_item):
    from django.test import override_settings

    with override_settings(SAFEMIGRATE={"BACKGROUND_MIN_ROWS": 0}):
        expand, contract = two_stages([item(("points", models.IntegerField()))],
                                      [item(("points", models.BigIntegerField()))])
    assert names(expand) == ["ChangeTypeViaCopy"] and expand.operations[0].background is True
    assert names(contract) == ["FinishChangeTypeViaCopy"] and contract.operations[0].stage is Stage.CONTRACT
    with override_settings(SAFEMIGRATE={"BACKGROUND_MIN_ROWS": None}):
        out = detect([item(("points", models.IntegerField()))], [item(("points", models.BigIntegerField()))])
    assert [names(m) for m in out] == [["ChangeTypeViaCopy", "FinishChangeTypeViaCopy"]]


def test_rename_strategy_falls_back_to_the_copy_where_the_release_or_the_models_need_it(capsys):
    """The view wherever it serves; the copy, with the reason printed, where it cannot."""
    import pgtrigger

    # The same release moves the model's table: the window's view would have to move with it.
    found = detect([item(*BASE)], [item(("full_name", models.CharField(max_length=50)), db_table="shop_things")])
    assert "RenameViaCopy" in names(found[0])
    printed = capsys.readouterr().err
    assert "renamed through a copy" in printed and "the same release renames the model's table" in printed
    # A trigger function of the model names the column.
    trigger = pgtrigger.Trigger(name="keep_name", operation=pgtrigger.Update, when=pgtrigger.Before,
                                func="NEW.name := trim(NEW.name); RETURN NEW;")
    before = item(*BASE, triggers=[trigger])
    after = item(("full_name", models.CharField(max_length=50)), triggers=[pgtrigger.Trigger(
        name="keep_name", operation=pgtrigger.Update, when=pgtrigger.Before,
        func="NEW.full_name := trim(NEW.full_name); RETURN NEW;")])
    assert "RenameViaCopy" in names(detect([before], [after])[0])
    # A trigger that does not name the column leaves the view possible.
    other = pgtrigger.Trigger(name="noop", operation=pgtrigger.Update, when=pgtrigger.Before, func="RETURN NEW;")
    assert "RenameFieldViaView" in names(detect([item(*BASE, triggers=[other])],
                                                [item(("full_name", models.CharField(max_length=50)),
                                                      triggers=[other])])[0])


def test_a_db_column_change_is_a_rename_through_the_same_choice():
    before = item(("name", models.CharField(max_length=50, null=True)))
    after = item(("name", models.CharField(max_length=50, null=True, db_column="label")))
    expand, contract = two_stages([before], [after])
    assert names(expand) == ["RenameColumnViaView"]
    assert ops(contract) == [("FinishRenameViaView", {"model_name": "item", "old_column": "name",
                                                      "new_column": "label"})]
    # With other attribute changes in the same edit, those follow the rename.
    after = item(("name", models.CharField(max_length=50, db_column="label", db_index=True, null=True)))
    expand, contract = two_stages([before], [after])
    assert names(expand)[:2] == ["RenameColumnViaView", "AlterFieldIndexes"]
    # Column name and type at once: two releases.
    after = item(("name", models.TextField(null=True, db_column="label")))
    with pytest.raises(UnsafeChange, match="two releases"):
        detect([before], [after])
    # Where a view cannot serve, a copy: the field keeps its name and moves to the new column.
    with override_settings(SAFEMIGRATE={"RENAME_STRATEGY": "copy"}):
        expand, contract = two_stages(
            [before], [item(("name", models.CharField(max_length=50, null=True, db_column="label")))])
    assert names(expand) == ["RenameViaCopy"]
    assert ops(contract) == [("FinishRenameViaCopy", {"model_name": "item", "old_name": "name", "new_name": "name",
                                                      "old_column": "name"})]
