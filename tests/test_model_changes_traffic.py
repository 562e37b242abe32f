"""Issue 21's five changes deployed under old- and new-code traffic with a lock blocker.

As ``tests/test_zero_downtime.py``: the old code's ORM traffic runs during
``makemigrations --safe`` and ``migrate``, both versions serve side by side,
the new code's traffic runs during ``migrate_contract``, and a transaction
keeps taking ACCESS SHARE on the table for 1.2 s at a time. Zero errors, no
request waiting longer than lock_timeout + 100 ms, every row right, and
``makemigrations --check`` clean. (1M rows: ``benchmarks/model_changes.py``.)
"""

import pytest

from testproject.model_change_scenarios import MODEL_CHANGE_SCENARIOS, VIRTUAL_GENERATED
from testproject.scenario import Scenario, ScenarioError
from tests.traffic import assert_scenario_kept_both_versions_working

pytestmark = [pytest.mark.traffic, pytest.mark.django_db(transaction=True)]

ROWS = 100_000
BOUND = 0.3  # lock_timeout (200 ms) + 100 ms
EXPECT_CONTRACT = {"add_auto_now_add", "change_db_column", "change_db_table"}


def check(result, name):
    assert_scenario_kept_both_versions_working(result, BOUND)
    stages = ["contract" if 'stage = "contract"' in text else "expand" for text in result.migration_files.values()]
    assert ("contract" in stages) == (name in EXPECT_CONTRACT), list(result.migration_files)


@pytest.mark.parametrize("name", [n for n in MODEL_CHANGE_SCENARIOS if n != "add_generated_field"])
def test_change_keeps_both_code_versions_working(name):
    check(Scenario(MODEL_CHANGE_SCENARIOS[name], rows=ROWS, echo=None).run(), name)


def test_unique_together_is_built_concurrently_in_a_non_atomic_migration():
    result = Scenario(MODEL_CHANGE_SCENARIOS["add_unique_together"], rows=ROWS, echo=None).run()
    check(result, "add_unique_together")
    (text,) = result.migration_files.values()
    assert "AlterUniqueTogetherConcurrently" in text and "atomic = False" in text
    assert any("concurrently" in record["step"] for record in result.report_steps), result.report_steps


@pytest.mark.skipif(not VIRTUAL_GENERATED, reason="VIRTUAL generated columns: Django 6.1 on PostgreSQL 18")
def test_virtual_generated_field_is_added_under_traffic():
    check(Scenario(MODEL_CHANGE_SCENARIOS["add_generated_field"], rows=ROWS, echo=None).run(), "add_generated_field")


@pytest.mark.skipif(VIRTUAL_GENERATED, reason="before Django 6.1 a generated column is STORED")
def test_stored_generated_field_is_refused_and_nothing_changes():
    with pytest.raises(ScenarioError, match=r"(?s)stored GeneratedField.*Safe sequence"):
        Scenario(MODEL_CHANGE_SCENARIOS["add_generated_field"], rows=ROWS, echo=None).run()
