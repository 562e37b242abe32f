"""The kill -9 fault profile as tests: ``pytest -m faults`` (deselected by default).

Each kind of change gets a few kill points on a small table; the full profile,
with more points and its summary figures, is ``python -m tests.faults``.
"""

import pytest

from tests.faults.harness import DEFAULT_KINDS, profile

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_every_kill_point_recovers_on_the_first_rerun(kind):
    outcomes, setup = profile(kind, rows=5000, spread=2, echo=lambda line: None)
    assert not setup, setup
    assert any(outcome.killed for outcome in outcomes), "no kill point hit a running command"
    failed = [(o.point.describe(), o.killed_at, o.problems, o.rerun_output[-500:])
              for o in outcomes if not (o.ok and o.rerun_ok)]
    assert not failed, failed
