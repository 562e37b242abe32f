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
from testproject.scenarios import SCENARIOS

pytestmark = [pytest.mark.traffic, pytest.mark.django_db(transaction=True)]

ROWS = 100_000
BOUND = 0.3  # lock_timeout (200 ms) + 100 ms
# int -> bigint ("change_type") widens: the swap happens at expand, nothing is left for contract.
# bigint -> int ("narrow_type") keeps the wider type until contract.
EXPECT_CONTRACT = {"add_not_null_field", "add_callable_default", "remove_field", "rename_field", "narrow_type",
                   "set_not_null", "rename_and_retype", "bigint_primary_key"}


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "rename_and_retype"])
def test_change_keeps_both_code_versions_working(name):
    result = Scenario(SCENARIOS[name], rows=ROWS, echo=None).run()
    assert result.failures == [], result.failures[0][-2000:]
    assert result.errors == [], result.errors[:2]
    assert result.blocker_holds >= 2, "the blocker must overlap the deploy"
    for summary in result.traffic:
        assert summary.calls > 50, summary.line()
        assert summary.slow(BOUND) == [], summary.line()
    assert result.checked_rows > 100
    assert result.missing == [] and result.mismatches == [], (result.missing[:5], result.mismatches[:5])
    assert result.failed_checks == []
    assert result.check_clean, "makemigrations --check must find nothing left to do"
    stages = ["contract" if 'stage = "contract"' in text else "expand" for text in result.migration_files.values()]
    assert stages[0] == "expand"
    assert ("contract" in stages) == (name in EXPECT_CONTRACT), list(result.migration_files)


def test_plain_django_breaks_the_old_code_on_the_same_rename():
    result = Scenario(SCENARIOS["rename_field"], rows=ROWS, safe=False, echo=None).run()
    old_code = [s for s in result.traffic if s.version == "old"]
    assert sum(len(s.errors) for s in old_code) > 0, "plain RenameField should break the running old code"
    assert any("does not exist" in error for s in old_code for error in s.errors)
