"""Stage of an operation / migration, and how a forwards plan is split."""

from django.db import migrations, models
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.migration import Migration

from safemigrate import operations as safe
from safemigrate.stages import Stage, migration_stage, operation_stage, split_plan


def make(app, name, operations=(), stage=None):
    migration = Migration(name, app)
    migration.operations = list(operations)
    if stage:
        migration.stage = stage
    return migration


def test_operation_and_migration_stage():
    drop = safe.DropColumn("item", "old")
    assert operation_stage(drop) is Stage.CONTRACT
    assert operation_stage(migrations.AddField("item", "x", models.IntegerField(null=True))) is Stage.EXPAND
    wrapped = migrations.SeparateDatabaseAndState(database_operations=[drop])
    assert operation_stage(wrapped) is Stage.CONTRACT
    assert migration_stage(make("a", "0001", [drop])) is Stage.CONTRACT
    assert migration_stage(make("a", "0001", [], stage="contract")) is Stage.CONTRACT
    assert migration_stage(make("a", "0001", [migrations.RunSQL("SELECT 1")])) is Stage.EXPAND
    assert str(Stage.CONTRACT) == "contract"


def test_split_plan_holds_contract_and_dependants_but_not_independent_expand():
    graph = MigrationGraph()
    nodes = {
        ("a", "0001"): make("a", "0001"),
        ("a", "0002"): make("a", "0002", stage="contract"),
        ("a", "0003"): make("a", "0003"),  # depends on the contract one
        ("b", "0001"): make("b", "0001"),  # depends on a.0001 only
        ("b", "0002"): make("b", "0002"),  # depends on a.0003, transitively on the contract
    }
    for key, migration in nodes.items():
        graph.add_node(key, migration)
    for child, parent in [(("a", "0002"), ("a", "0001")), (("a", "0003"), ("a", "0002")),
                          (("b", "0001"), ("a", "0001")), (("b", "0002"), ("a", "0003")),
                          (("b", "0002"), ("b", "0001"))]:
        graph.add_dependency(None, child, parent)
    plan = [(nodes[key], False) for key in [("a", "0001"), ("a", "0002"), ("a", "0003"), ("b", "0001"), ("b", "0002")]]
    runnable, held = split_plan(plan, graph)
    assert [(m.app_label, m.name) for m, _ in runnable] == [("a", "0001"), ("b", "0001")]
    assert [(m.app_label, m.name) for m, _ in held] == [("a", "0002"), ("a", "0003"), ("b", "0002")]


def test_backwards_steps_are_never_held():
    graph = MigrationGraph()
    contract = make("a", "0002", stage="contract")
    graph.add_node(("a", "0002"), contract)
    runnable, held = split_plan([(contract, True)], graph)
    assert runnable == [(contract, True)] and held == []
