"""Issue 25's acceptance test: every kind of contract undone under traffic, nothing lost.

For a column removal, a table removal, a rename's source, a type change's
source and a bigint swap: contract -> the new code writes -> the contract
migration reversed -> ``archive restore`` -> the old code works again, with
every row it had before the contract and the rows written in between kept;
the archive's checksum verified; 0 errors and no request waiting longer than
lock_timeout + 100 ms in any phase, while blockers keep taking ACCESS SHARE
on the tables (``tests/archive_scenario.py``).
"""

import pytest

from tests.archive_scenario import UNDO, UndoScenario

pytestmark = [pytest.mark.traffic, pytest.mark.django_db(transaction=True)]

BOUND = 0.3  # lock_timeout (200 ms) + 100 ms, as tests/test_zero_downtime.py


@pytest.mark.parametrize("name", list(UNDO))
def test_contract_undone_under_traffic_loses_nothing(name):
    undo = UndoScenario(UNDO[name]).run_undo()
    result = undo.scenario
    assert result.failures == [], result.failures[0][-3000:]
    assert result.errors == [], result.errors[:2]
    for summary in result.traffic:
        assert summary.calls > 20, summary.line()
        assert summary.slow(BOUND) == [], summary.line()
    assert result.blocker_holds >= 2, "the blocker must overlap the deploy"
    phases = {(s.version, s.phase) for s in result.traffic}
    assert ("old", "after restore") in phases and ("new", "contract, reverse, restore") in phases
    assert undo.snapshot_rows >= 20_000
    assert undo.archives, "the contract archived nothing"
    assert len(undo.restores) == len(undo.archives)
    assert all(r["checksum_ok"] for r in undo.restores), undo.restores
    assert undo.lost == [], undo.lost[:5]
    assert undo.written_between, "the new code wrote nothing in between"
