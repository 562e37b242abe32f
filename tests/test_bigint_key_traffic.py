"""Traffic proof: an int primary key and the foreign keys to it become bigint under old and new code.

100k rows, a Blocker holding ACCESS SHARE for over a second repeatedly, old
code during expand, new code during contract: every row either version wrote
is there, linked, after the swap.
"""

import threading
import time

import pytest
from django.test import override_settings

from tests.copy_tables import author_and_book
from tests.traffic import Blocker, Traffic
from tests.utils import apply_operations, execute

pytestmark = pytest.mark.traffic

BOUND = 0.3  # LOCK_TIMEOUT_MS 200 + 100 ms


def test_primary_key_to_bigint_under_old_and_new_code_traffic(transactional_db):
    from django.db import connection

    from safemigrate.operations import ChangePrimaryKeyToBigint, FinishChangePrimaryKeyToBigint

    author, book, state = author_and_book(100_000, 20_000)
    try:
        execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), 100000)", [f'"{author}"'])
        old_models, new_models = state.apps, None
        written = []
        lock = threading.Lock()

        def code(apps):
            def run(index, iteration):
                a = apps.get_model("shop", "Author").objects.create(name=f"w{index}-{iteration}")
                b = apps.get_model("shop", "Book").objects.create(author_id=a.pk)
                with lock:
                    written.append((a.pk, a.name, b.pk))
            return run

        with override_settings(SAFEMIGRATE={"LOCK_TIMEOUT_MS": 200, "LOCK_RETRIES": 60, "RETRY_BACKOFF_MAX_MS": 400}):
            with Blocker(author) as blocker:
                with Traffic("old code (expand)", code(old_models)) as old_traffic:
                    time.sleep(0.2)
                    new_state, _ = apply_operations([ChangePrimaryKeyToBigint("author")], state)
                new_models = new_state.apps
                with Traffic("new code (contract)", code(new_models)) as new_traffic:
                    time.sleep(0.2)
                    apply_operations([FinishChangePrimaryKeyToBigint("author")], new_state)
                    time.sleep(0.2)
        assert blocker.holds >= 1
        for result in (old_traffic.result, new_traffic.result):
            assert result.errors == [], result.errors[:1]
            assert result.slow(BOUND) == [], str(result)
        print("worst waits:", f"{old_traffic.result.worst:.3f}s", f"{new_traffic.result.worst:.3f}s")
        assert execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = 'id'",
                       [author]) == [("bigint",)]
        rows = dict((pk, name) for pk, name in execute(f'SELECT id, name FROM "{author}" WHERE id > 100000'))
        assert len(written) > 10 and all(rows.get(pk) == name for pk, name, _ in written)
        linked = execute(f'SELECT count(*) FROM "{book}" b JOIN "{author}" a ON a.id = b.author_id WHERE b.id = ANY(%s)',
                         [[b for _, _, b in written]])
        assert linked == [(len(written),)]
    finally:
        connection.close()
        execute(f'DROP TABLE IF EXISTS "{book}", "{author}" CASCADE')
