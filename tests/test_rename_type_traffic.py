"""Traffic proof: rename through a copy and int -> bigint through a copy, under old and new code.

100k rows, a Blocker holding ACCESS SHARE for over a second repeatedly,
old code during expand, both versions side by side, new code during
contract. Every value either version wrote must be in the final schema.
"""

import threading
import time

import pytest
from django.db import models
from django.test import override_settings

from safemigrate.operations import (
    ChangeTypeViaCopy,
    FinishChangeTypeViaCopy,
    FinishRenameViaCopy,
    RenameViaCopy,
)
from tests.copy_tables import cols, customer_state
from tests.traffic import Blocker, Traffic
from tests.utils import apply_operations, execute, fill_table, version_of_model

pytestmark = pytest.mark.traffic

BOUND = 0.3  # LOCK_TIMEOUT_MS 200 + 100 ms


def workload(model, name_field, written, pk_base, prefix):
    """Alternate inserts and updates; remember the last value written per pk.

    Each thread updates its own pks, so "last value" is well defined.
    """
    lock = threading.Lock()

    def run(index, iteration):
        value = f"{prefix}-{index}-{iteration}"
        if iteration % 2:
            row = model.objects.create(**{name_field: value, "points": iteration})
        else:
            row = model.objects.get(pk=pk_base + index * 400 + iteration % 400 + 1)
            setattr(row, name_field, value)
            row.points = iteration
            row.save()
        with lock:
            written[row.pk] = (value, iteration)

    return run


def test_rename_and_int_to_bigint_under_old_and_new_code_traffic(table_name):
    execute(f'CREATE TABLE "{table_name}" (id bigserial PRIMARY KEY, name varchar(50) NOT NULL, points int NOT NULL)')
    fill_table(table_name, 100_000, name="'c' || i", points="i")
    state = customer_state(table_name, models.CharField(max_length=50), ())
    Old = version_of_model("Customer", {"name": models.CharField(max_length=50), "points": models.IntegerField()},
                           table_name)
    New = version_of_model("Customer", {"full_name": models.CharField(max_length=50),
                                        "points": models.BigIntegerField()}, table_name)
    written = {}
    old_code = workload(Old, "name", written, 0, "old")
    new_code = workload(New, "full_name", written, 1000, "new")

    expand = [RenameViaCopy("customer", "name", "full_name"),
              ChangeTypeViaCopy("customer", "points", models.BigIntegerField())]
    contract = [FinishRenameViaCopy("customer", "name", "full_name"),
                FinishChangeTypeViaCopy("customer", "points", models.BigIntegerField())]
    with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}):
        with Blocker(table_name) as blocker:
            with Traffic("old code (expand)", old_code) as old_traffic:
                time.sleep(0.2)
                started = time.monotonic()
                new_state, _ = apply_operations(expand, state)
                expand_seconds = time.monotonic() - started
                with Traffic("new code (side by side)", new_code) as both:
                    time.sleep(0.8)
            with Traffic("new code (contract)", new_code) as new_traffic:
                time.sleep(0.2)
                apply_operations(contract, new_state)
                time.sleep(0.2)
    assert blocker.holds >= 1
    for result in (old_traffic.result, both.result, new_traffic.result):
        assert result.errors == [], result.errors[:1]
        assert result.slow(BOUND) == [], str(result)
    print(f"expand took {expand_seconds:.1f}s; worst waits: "
          + ", ".join(f"{r.worst:.3f}s" for r in (old_traffic.result, both.result, new_traffic.result)))

    assert cols(table_name) == {"id", "full_name", "points"}
    types = dict(execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                         [table_name]))
    assert types["points"] == "bigint"
    final = dict((pk, (name, points)) for pk, name, points in
                 execute(f'SELECT id, full_name, points FROM "{table_name}" WHERE id = ANY(%s)', [list(written)]))
    assert any(v[0].startswith("old-") for v in written.values())
    assert any(v[0].startswith("new-") for v in written.values())
    missing = {pk: value for pk, value in written.items() if final.get(pk) != value}
    assert missing == {}, list(missing.items())[:3]
    untouched = execute(f'SELECT count(*) FROM "{table_name}" WHERE id > 2000 AND id <= 100000 '
                        f"AND (full_name <> 'c' || id OR points <> id)")
    assert untouched == [(0,)]
    assert execute(f'SELECT count(*) FROM "{table_name}" WHERE full_name IS NULL OR points IS NULL') == [(0,)]
