"""The README's demo runs and reports zero errors (small table to stay fast)."""

import pytest

from testproject import demo

pytestmark = [pytest.mark.traffic, pytest.mark.django_db(transaction=True)]


def test_demo_runs_and_reports(capsys):
    assert demo.main(["--rows", "20000", "--hold", "1.2"]) == 0
    out = capsys.readouterr().out
    assert "Errors seen by the application: 0" in out
    assert "0002_expand_" in out and "0003_contract_" in out
    assert "backfill existing rows" in out and "lock retries" in out
