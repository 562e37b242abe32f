"""The kill -9 fault profile as tests: ``pytest -m faults`` (deselected by default).

Each kind of change gets a few kill points on a small table; the full profile,
with more points and its summary figures, is ``python -m tests.faults``.
"""

import pytest

from tests.faults.harness import (
    DEFAULT_KINDS, PHASES, Clone, calibrate, discard, prepare, profile, run_phase, verify,
)

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_every_kill_point_recovers_on_the_first_rerun(kind):
    outcomes, setup = profile(kind, rows=5000, spread=2, echo=lambda line: None)
    assert not setup, setup
    assert any(outcome.killed for outcome in outcomes), "no kill point hit a running command"
    failed = [(o.point.describe(), o.killed_at, o.problems, o.rerun_output[-500:])
              for o in outcomes if not (o.ok and o.rerun_ok)]
    assert not failed, failed


def test_the_checks_catch_a_killed_run_that_is_not_run_again():
    """Without the re-run, the same checks must fail: they can tell a broken deploy."""
    kind, rows = "change_type", 5000
    scenario = prepare(kind, rows)
    try:
        _, baseline, setup = calibrate(scenario, kind, rows, echo=lambda line: None)
        assert not setup, setup
        with Clone(scenario, scenario.dbname, f"{scenario.dbname}_nokill") as clone:
            # Killed right after the copy trigger is installed, before the backfill ends.
            *_, killed_at, _ = run_phase(scenario, PHASES["migrate"], kill=(2, 0.0))
            assert killed_at
            problems = verify(scenario, kind, clone.dsn(), rows, baseline)
    finally:
        discard(scenario)
    text = "\n".join(problems)
    assert "differ from a clean run" in text and "points__sm_new" in text, text
    # int -> bigint widens: the swap belongs to the expand, so the unfinished expand shows as the
    # old type still in place (the final check), not as pending contract work.
    assert "final check failed" in text and "data_type = 'bigint'" in text, text
