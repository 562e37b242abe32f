"""Both code versions' ORM traffic through a rename window, with a report query blocking the table.

The old code runs while the window opens, both versions side by side while
it is open, the new code while it closes; a blocker takes ACCESS SHARE on
the table for 1.2 s at a time throughout. Zero errors, and no request waits
longer than lock_timeout + 100 ms. (Latency through the view against the
table itself is a figure of ``benchmarks/renames.py``, not a test bound.)
"""

import time

import pytest
from django.db import connection, transaction
from django.test import override_settings

from safemigrate.operations import FinishRenameViaView, RenameFieldViaView
from safemigrate.pg import catalog, views
from tests.rename_window import create_customers, drop_window, versions
from tests.traffic import Blocker, Traffic
from tests.utils import apply_operations, execute

pytestmark = pytest.mark.traffic

ROWS = 100_000
BOUND = 0.3  # lock_timeout (200 ms) + 100 ms


def workload(model, column, offset):
    def run(index, iteration):
        code = 5_000_000 + offset * 10_000_000 + index * 1_000_000 + iteration
        kind = iteration % 5
        if kind == 0:
            model.objects.create(code=code, points=1, **{column: f"c{code}"})
        elif kind == 1:
            model.objects.filter(pk=iteration % ROWS + 1).update(**{column: f"u{iteration}"})
        elif kind == 2:
            with transaction.atomic():
                row = model.objects.select_for_update().get(pk=iteration % ROWS + 1)
                setattr(row, column, f"s{iteration}")
                row.save(update_fields=[column])
        elif kind == 3:
            model.objects.bulk_create([model(code=code, points=2, **{column: f"b{code}"})], update_conflicts=True,
                                      unique_fields=["code"], update_fields=[column, "points"])
        else:
            assert getattr(model.objects.get(pk=iteration % ROWS + 1), column)
    return run


def test_both_versions_through_the_window_under_a_blocker(table_name):
    state = create_customers(table_name, rows=ROWS)
    Old, New = versions(table_name)
    expand = RenameFieldViaView("customer", "name", "full_name")
    contract = FinishRenameViaView("customer", "name", "full_name")
    try:
        with override_settings(SAFEMIGRATE={"LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}):
            with Blocker(table_name) as blocker, Traffic("old code", workload(Old, "name", 0)) as old:
                time.sleep(0.3)
                new_state, _ = apply_operations([expand], state)
                assert catalog.rename_window(connection, table_name) is not None
                with Traffic("new code", workload(New, "full_name", 1)) as new:
                    time.sleep(2.0)  # both versions side by side through the view
            with Blocker(table_name) as blocker_2, Traffic("new code", workload(New, "full_name", 2)) as late:
                time.sleep(0.3)
                apply_operations([contract], new_state)
                time.sleep(0.5)
        assert blocker.holds >= 1 and blocker_2.holds >= 1
        for traffic in (old, new, late):
            assert traffic.result.calls > 20, str(traffic.result)
            assert traffic.result.errors == [], traffic.result.errors[:2]
            assert traffic.result.slow(BOUND) == [], str(traffic.result)
        assert catalog.rename_window(connection, table_name) is None
        assert execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [f'"{table_name}"']) == [("r",)]
        assert execute("SELECT to_regclass(%s)", [f'"{views.base_name(table_name)}"']) == [(None,)]
        # Every row either version wrote is there under the new name.
        assert execute(f'SELECT count(*) FROM "{table_name}" WHERE full_name IS NULL') == [(0,)]
        assert execute(f'SELECT count(*) FROM "{table_name}" WHERE code >= 5000000')[0][0] > 0
    finally:
        drop_window(table_name)
