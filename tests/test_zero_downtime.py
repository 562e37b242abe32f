"""End to end: a model change deployed under old- and new-code traffic.

For each risky change: the old code's traffic runs (its own process) while
``makemigrations --safe`` and ``migrate`` run, both versions serve side by
side during the rollout, and the new code's traffic runs during
``migrate_contract`` — all while a blocker keeps taking ACCESS SHARE on the
table for 1.2 s at a time. Zero errors, no request waiting longer than
lock_timeout + 100 ms, every row either version wrote present and right, and
``makemigrations --check`` clean afterwards. Plain Django's run of the same
change is the contrast.
"""

import pytest

from testproject.scenario import Scenario
from testproject.scenarios import PARTITIONED_SCENARIOS, SCENARIOS
from tests.traffic import assert_scenario_kept_both_versions_working

pytestmark = [pytest.mark.traffic, pytest.mark.django_db(transaction=True)]

ROWS = 100_000
BOUND = 0.3  # lock_timeout (200 ms) + 100 ms
# int -> bigint ("change_type") widens: the swap happens at expand, nothing is left for contract.
# bigint -> int ("narrow_type") keeps the wider type until contract.
EXPECT_CONTRACT = {"add_not_null_field", "add_callable_default", "remove_field", "rename_field", "narrow_type",
                   "set_not_null", "rename_and_retype", "bigint_primary_key"}


#: Run again as on a managed database (docs/pages/roles.md): migrations by the owner role, traffic by
#: the app role with DML grants only, tables in the schema ``app`` with same-named decoys in ``public``.
#: Between them these cover triggers and their functions, backfills and their progress table, shadow
#: columns and the contract swap, concurrent unique indexes.
TWO_ROLE = ["rename_field", "narrow_type", "add_callable_default"]


@pytest.mark.parametrize("name,profile", [(n, "superuser") for n in SCENARIOS if n != "rename_and_retype"]
                         + [(n, "two_role_app_schema") for n in TWO_ROLE])
def test_change_keeps_both_code_versions_working(name, profile):
    result = Scenario(SCENARIOS[name], rows=ROWS, echo=None, profile=profile).run()
    assert_scenario_kept_both_versions_working(result, BOUND)
    if profile != "superuser":
        assert result.table_home == ("app", "app_owner")
    stages = ["contract" if 'stage = "contract"' in text else "expand" for text in result.migration_files.values()]
    assert stages[0] == "expand"
    assert ("contract" in stages) == (name in EXPECT_CONTRACT), list(result.migration_files)


#: Partitioned tables (8 partitions, a ninth attached during ``migrate``): their waits are per
#: partition, not per row, so a smaller table shows the same; benchmarks/partitioned.py runs 2M rows.
PARTITIONED_ROWS = 20_000


@pytest.mark.parametrize("name", list(PARTITIONED_SCENARIOS))
def test_partitioned_table_change_keeps_both_code_versions_working(name):
    """Every index valid and attached on every partition, every constraint validated (final checks)."""
    result = Scenario(PARTITIONED_SCENARIOS[name], rows=PARTITIONED_ROWS, echo=None,
                      profile="two_role_app_schema").run()
    assert_scenario_kept_both_versions_working(result, BOUND)
    assert result.table_home == ("app", "app_owner")
    written = "".join(result.migration_files.values())
    expected = {"partitioned_constraints": ["CreateIndexConcurrently", "AddUniqueConstraint", "AddCheckConstraint",
                                            "AddForeignKey", "SetNotNull", "DropColumn"],
                "partitioned_columns": ["RenameViaCopy", "ChangeTypeViaCopy", "Backfill"]}[name]
    assert all(f"safemigrate.operations.{operation}(" in written for operation in expected), written


def test_plain_django_breaks_the_old_code_on_the_same_rename():
    result = Scenario(SCENARIOS["rename_field"], rows=ROWS, safe=False, echo=None).run()
    old_code = [s for s in result.traffic if s.version == "old"]
    assert sum(len(s.errors) for s in old_code) > 0, "plain RenameField should break the running old code"
    assert any("does not exist" in error for s in old_code for error in s.errors)
