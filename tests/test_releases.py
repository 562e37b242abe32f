"""Several releases in flight: release N+1's expand runs while release N's contract waits."""

import pytest
from django.db import migrations, models
from django.db.migrations.graph import MigrationGraph
from django.db.migrations.migration import Migration
from django.db.migrations.state import ModelState, ProjectState

from safemigrate import operations as safe
from safemigrate.planning import releases
from safemigrate.stages import Stage

V0 = """
class Item(models.Model):
    name = models.CharField(max_length=50)
    title = models.CharField(max_length=50)
"""
V1 = V0.replace("title =", "headline =")  # rename: expand + contract
V2 = V1 + "    note = models.TextField(null=True)\n"  # nullable field: expand only
V3 = V2.replace("    name = models.CharField(max_length=50)\n", "")  # remove: expand + contract


def release(project, models_source, *args):
    project.models(models_source)
    result = project.run("makemigrations", "relapp", *args, input="y\ny\n")
    project.assert_django_tooling_clean()
    return result


def test_three_releases_expand_while_contracts_wait_then_one_contract_batch(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    release(project, V1, "--safe")
    assert project.files()[1:] == ["0002_expand_rename_item_title_headline",
                                   "0003_contract_finish_rename_item_title_headline"]
    out = project.run("migrate", "--noinput").stdout
    assert "Held back 1 contract migration(s)" in out
    project.assert_django_tooling_clean()

    release(project, V2, "--safe")
    new = project.files()[3:]
    assert new == ["0004_item_note", "0005_join"]
    # The new expand depends on the old contract's expand part, the join on both.
    assert "('relapp', '0002_expand_rename_item_title_headline')" in project.source("0004")
    assert "0003_contract" not in project.source("0004")
    join = project.source("0005")
    assert "0003_contract_finish_rename_item_title_headline" in join and "0004_item_note" in join
    assert "safemigrate.operations.ContractJoin(" in join
    result = project.run("migrate", "--noinput")
    assert "Applying relapp.0004_item_note... OK" in result.stdout
    assert {"note", "headline", "title"} <= project.columns()  # old column kept: contract pending
    project.assert_django_tooling_clean()

    release(project, V3, "--safe")
    assert project.files()[5:] == ["0006_expand_remove_item_name", "0007_contract_drop_item_name"]
    assert "0004_item_note" in project.source("0006") and "0005_join" not in project.source("0006")
    assert "0005_join" in project.source("0007")  # the new contract keeps the app's one leaf
    project.run("migrate", "--noinput")
    assert project.applied() == {"0001_initial", "0002_expand_rename_item_title_headline", "0004_item_note",
                                 "0006_expand_remove_item_name"}
    project.assert_django_tooling_clean()

    out = project.run("migrate_contract", "--noinput").stdout
    order = [out.index(f"Applying relapp.{name}") for name in
             ("0003_contract_finish_rename_item_title_headline", "0005_join", "0007_contract_drop_item_name")]
    assert order == sorted(order)
    assert project.columns() == {"id", "headline", "note"}
    assert len(project.applied()) == 7
    assert project.run("migrate_contract", "--check", check=False).returncode == 0
    project.assert_django_tooling_clean()
    # squashmigrations drops the (elidable) join; the squashed history stays consistent.
    project.run("squashmigrations", "relapp", "0005", "--noinput")
    squashed = project.source("0001_squashed_0005")
    # (Django folds the rename into CreateModel, as it does a plain RenameField.)
    assert "ContractJoin" not in squashed and "FinishRenameViaView" in squashed
    project.run("migrate", "--noinput")  # records the squash, as Django's migrate does
    shown = project.run("showmigrations", "relapp").stdout
    assert "[X] 0001_squashed_0005_join (5 squashed migrations)" in shown and "[X] 0007_contract" in shown
    assert project.run("makemigrations", "--check", "--dry-run", "relapp", check=False).returncode == 0


def test_contract_applied_between_two_expands_and_rollback_of_the_newest_expand(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    release(project, V1, "--safe")
    project.run("migrate", "--noinput")
    project.run("migrate_contract", "--noinput")
    # Plain makemigrations (no --safe) gives the same graph shape after a contract.
    release(project, V2)
    assert project.files()[3:] == ["0004_item_note", "0005_join"]
    project.run("migrate", "--noinput")
    assert "note" in project.columns() and "0005_join" not in project.applied()
    project.run("migrate_contract", "--noinput")
    assert "0005_join" in project.applied()
    project.assert_django_tooling_clean()


def test_rollback_of_the_newest_expand_while_an_older_contract_is_pending(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    release(project, V1, "--safe")
    project.run("migrate", "--noinput")
    release(project, V2, "--safe")
    project.run("migrate", "--noinput")
    assert "note" in project.columns()
    project.run("migrate", "relapp", "0002", "--noinput")
    assert "note" not in project.columns() and "title" in project.columns()
    assert project.applied() == {"0001_initial", "0002_expand_rename_item_title_headline"}
    project.assert_django_tooling_clean()
    project.run("migrate", "--noinput")
    assert "note" in project.columns()
    project.run("migrate_contract", "--noinput")
    assert project.columns() == {"id", "name", "headline", "note"}


def test_new_expand_touching_what_the_pending_contract_drops_waits_and_migrate_fails(project):
    release(project, V0, "--noinput")
    project.run("migrate", "--noinput")
    without_name = V0.replace("    name = models.CharField(max_length=50)\n", "")
    release(project, without_name, "--safe")
    project.run("migrate", "--noinput")
    # Re-adding the dropped field: its column still exists until the contract drops it.
    readded = without_name + "    name = models.TextField(null=True)\n"
    result = release(project, readded, "--safe")
    assert project.files()[3:] == ["0004_item_name"]
    assert "0003_contract_drop_item_name" in project.source("0004")
    assert "depends on the contract migration relapp.0003_contract_drop_item_name" in result.stderr
    failed = project.run("migrate", "--noinput", check=False)
    assert failed.returncode != 0
    assert "relapp.0004_item_name (expand) waits for relapp.0003_contract_drop_item_name" in failed.stderr
    assert "migrate_contract relapp 0003_contract_drop_item_name" in failed.stderr
    assert "0004_item_name" not in project.applied()
    project.run("migrate_contract", "relapp", "0003", "--noinput")
    project.run("migrate", "--noinput")
    assert "0004_item_name" in project.applied()


# -- in-process: graph walking, conflicts, state equivalence ------------------------------------

def graph_of(edges, contracts):
    graph = MigrationGraph()
    keys = {key for edge in edges for key in edge}
    for key in keys:
        migration = Migration(key[1], key[0])
        if key in contracts:
            migration.stage = "contract"
        graph.add_node(key, migration)
    for child, parent in edges:
        graph.add_dependency(None, child, parent)
    return graph


def test_expand_frontier_walks_through_contracts_and_keeps_the_minimal_set():
    a = lambda n: ("a", n)  # noqa: E731
    graph = graph_of([(a("2"), a("1")), (a("3"), a("2")), (a("4"), a("2")), (a("5"), a("3")), (a("5"), a("4"))],
                     contracts={a("3"), a("5")})
    assert releases.expand_frontier(graph, a("5")) == {a("4")}
    assert releases.expand_frontier(graph, a("4")) == {a("4")}
    assert releases.bypassed(graph, a("5"), {a("4")}) == {a("5"), a("3")}


def item_state(*fields):
    state = ProjectState()
    state.add_model(ModelState("shop", "Item", [("id", models.BigAutoField(primary_key=True)), *fields]))
    return state


def contract(*operations):
    migration = Migration("0003_contract", "shop")
    migration.operations = list(operations)
    return migration


@pytest.mark.parametrize("new_op, bypassed_op, clash", [
    (migrations.AddField("item", "old", models.TextField(null=True)), safe.DropColumn("item", "old"), True),
    (migrations.AddField("item", "note", models.TextField(null=True)), safe.DropColumn("item", "old"), False),
    (migrations.AlterField("item", "title", models.TextField()), safe.FinishRenameViaCopy("item", "name", "title"),
     True),
    (migrations.AddField("item", "name", models.TextField(null=True)),
     safe.FinishRenameViaCopy("item", "name", "title"), True),
    (migrations.AddIndex("item", models.Index(fields=["note"], name="i_note")),
     safe.SetNotNull("item", "title", models.TextField(), stage="contract"), False),
    (migrations.AddIndex("item", models.Index(fields=["title"], name="i_title")),
     safe.SetNotNull("item", "title", models.TextField(), stage="contract"), True),
    (migrations.CreateModel("Other", [("id", models.BigAutoField(primary_key=True))],
                            options={"db_table": "shop_gone"}), safe.DropTable("shop_gone"), True),
    (migrations.AddField("item", "parent", models.ForeignKey("shop.Box", models.CASCADE, null=True)),
     safe.FinishChangePrimaryKeyToBigint("box"), True),
    (migrations.DeleteModel("Item"), safe.DropColumnDefault("item", "title"), True),
    (migrations.AddField("box", "item", models.ForeignKey("shop.Item", models.CASCADE, to_field="title", null=True)),
     safe.SetNotNull("item", "title", models.TextField(), stage="contract"), True),
    (migrations.AddField("box", "item", models.ForeignKey("shop.Item", models.CASCADE, null=True)),
     safe.SetNotNull("item", "title", models.TextField(), stage="contract"), False),
    (migrations.AddField("item", "note", models.TextField(null=True)), migrations.RunSQL("SELECT 1"), True),
    (migrations.RunPython(migrations.RunPython.noop), safe.DropColumn("item", "old"), True),
    # A rename window: other fields of the table go ahead (on the base table), the table itself waits.
    (migrations.AddField("item", "note", models.TextField(null=True)), safe.FinishRenameViaView("item", "name", "title"),
     False),
    (migrations.AddIndex("item", models.Index(fields=["note"], name="i_note")),
     safe.FinishRenameViaView("item", "name", "title"), False),
    (migrations.AlterField("item", "title", models.TextField()), safe.FinishRenameViaView("item", "name", "title"),
     False),
    (migrations.AddField("item", "name", models.TextField(null=True)),
     safe.FinishRenameViaView("item", "name", "title"), True),
    (migrations.RenameModel("Item", "Thing"), safe.FinishRenameViaView("item", "name", "title"), True),
    (migrations.AlterModelTable("Item", "shop_things"), safe.FinishRenameViaView("item", "name", "title"), True),
    (migrations.DeleteModel("Item"), safe.FinishRenameViaView("item", "name", "title"), True),
])
def test_conflicts_between_a_new_operation_and_a_bypassed_contract(new_op, bypassed_op, clash):
    state = item_state(("title", models.TextField(null=True)))
    state.add_model(ModelState("shop", "Box", [("id", models.BigAutoField(primary_key=True))]))
    reasons = releases.conflicts([("shop", new_op)], [contract(bypassed_op)], state, state)
    assert bool(reasons) is clash, reasons


CONTRACT_SAMPLES = {
    safe.DropColumn: safe.DropColumn("item", "old", field=models.TextField(null=True)),
    safe.DropColumnDefault: safe.DropColumnDefault("item", "title"),
    safe.ReplaceForeignKey: safe.ReplaceForeignKey("item", "title"),
    safe.FinishRenameViaCopy: safe.FinishRenameViaCopy("item", "name", "title"),
    safe.FinishRenameViaView: safe.FinishRenameViaView("item", "name", "title"),
    safe.FinishChangeTypeViaCopy: safe.FinishChangeTypeViaCopy("item", "title", models.TextField(null=True)),
    safe.DropTable: safe.DropTable("shop_gone"),
    safe.DropCompatibilityView: safe.DropCompatibilityView("shop_old", "shop_item"),
    safe.FinishChangePrimaryKeyToBigint: safe.FinishChangePrimaryKeyToBigint("item"),
    safe.ContractJoin: safe.ContractJoin(),
}


def test_every_contract_operation_changes_only_the_database_except_contract_set_not_null():
    """The premise of reordering: contract operations leave Django's state alone."""
    contract_classes = {getattr(safe, name) for name in safe.__all__
                        if getattr(getattr(safe, name), "stage", None) is Stage.CONTRACT}
    assert contract_classes == set(CONTRACT_SAMPLES), "a new contract operation needs a sample here"
    for operation in CONTRACT_SAMPLES.values():
        state = item_state(("title", models.TextField(null=True)))
        before = state.clone()
        operation.state_forwards("shop", state)
        assert state.models == before.models, operation
        assert releases.contract_targets("shop", operation) or isinstance(operation, safe.ContractJoin)
    # The one instance-level contract operation that does change state is caught as a field target.
    set_not_null = safe.SetNotNull("item", "title", models.TextField(), stage="contract")
    state = item_state(("title", models.TextField(null=True)))
    set_not_null.state_forwards("shop", state)
    assert state.models["shop", "item"].get_field("title").null is False
    assert releases.contract_targets("shop", set_not_null) == [("field", "shop", "item", {"title"})]


def contract_graph():
    """shop: 0001 -> 0002 (expand) -> 0003 (contract, drops item.old): the leaf is a contract."""
    return graph_of([(("shop", "0002_expand"), ("shop", "0001_initial")),
                     (("shop", "0003_contract"), ("shop", "0002_expand"))], contracts={("shop", "0003_contract")})


def new_migration(*operations):
    migration = Migration("0004_new", "shop")
    migration.operations = list(operations)
    migration.dependencies = [("shop", "0003_contract")]
    return migration


def test_branch_past_contracts_in_process():
    graph = contract_graph()
    state = item_state(("title", models.TextField(null=True)))
    changes = {"shop": [new_migration(migrations.AddField("item", "note", models.TextField(null=True)))]}
    releases.branch_past_contracts(changes, graph, state, state)
    expand, join = changes["shop"]
    assert expand.dependencies == [("shop", "0002_expand")]
    assert join.name == "0005_join" and join.dependencies == [("shop", "0003_contract"), ("shop", "0004_new")]
    assert [type(op).__name__ for op in join.operations] == ["ContractJoin"]


@pytest.mark.parametrize("operations", [(), (migrations.RunSQL("UPDATE shop_item SET title = 'x'"),)])
def test_empty_or_opaque_new_migrations_keep_the_contract_dependency(operations):
    graph = contract_graph()
    graph.nodes[("shop", "0003_contract")].operations = [safe.DropColumn("item", "old")]
    state = item_state(("title", models.TextField(null=True)))
    changes = {"shop": [new_migration(*operations)]}
    releases.branch_past_contracts(changes, graph, state, state, questioner=type("Q", (), {"log": print})())
    assert [m.name for m in changes["shop"]] == ["0004_new"]
    assert changes["shop"][0].dependencies == [("shop", "0003_contract")]


def test_a_dependency_on_another_apps_contract_goes_to_its_expand_part_without_a_join():
    graph = contract_graph()
    graph.nodes[("shop", "0003_contract")].operations = [safe.DropColumn("item", "old")]
    graph.add_node(("ledger", "0001_initial"), Migration("0001_initial", "ledger"))
    state = item_state(("title", models.TextField(null=True)))
    state.add_model(ModelState("ledger", "Entry", [("id", models.BigAutoField(primary_key=True))]))
    migration = Migration("0002_entry_item", "ledger")
    migration.operations = [migrations.AddField("entry", "item", models.ForeignKey("shop.Item", models.CASCADE,
                                                                                   null=True))]
    migration.dependencies = [("ledger", "0001_initial"), ("shop", "0003_contract")]
    changes = {"ledger": [migration]}
    releases.branch_past_contracts(changes, graph, state, state)
    assert [m.name for m in changes["ledger"]] == ["0002_entry_item"]
    assert migration.dependencies == [("ledger", "0001_initial"), ("shop", "0002_expand")]


def test_planning_never_imports_the_commands():
    """The layer rule: planning imports the engine and operations, never the commands."""
    import ast
    from pathlib import Path

    import safemigrate.planning

    for path in Path(safemigrate.planning.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if "commands" in name.split(".") or "management" in name.split(".")
                    and "django" not in name], (path.name, imported)


def test_after_a_join_the_next_expand_only_release_gets_its_own_join():
    """While the app's last migration is contract-stage, each expand-only release adds one join."""
    graph = contract_graph()
    graph.add_node(("shop", "0004_note"), Migration("0004_note", "shop"))
    graph.add_dependency(None, ("shop", "0004_note"), ("shop", "0002_expand"))
    join = Migration("0005_join", "shop")
    join.operations = [safe.ContractJoin()]
    graph.add_node(("shop", "0005_join"), join)
    graph.add_dependency(None, ("shop", "0005_join"), ("shop", "0003_contract"))
    graph.add_dependency(None, ("shop", "0005_join"), ("shop", "0004_note"))
    state = item_state(("title", models.TextField(null=True)))
    migration = new_migration(migrations.AddField("item", "memo", models.TextField(null=True)))
    migration.name, migration.dependencies = "0006_memo", [("shop", "0005_join")]
    changes = {"shop": [migration]}
    releases.branch_past_contracts(changes, graph, state, state)
    assert migration.dependencies == [("shop", "0004_note")]
    assert changes["shop"][1].name == "0007_join"
    assert changes["shop"][1].dependencies == [("shop", "0005_join"), ("shop", "0006_memo")]
