"""Both code versions through a rename window, through a real PgBouncer in transaction pooling mode.

The window's view is a plain catalog object, so a pooler changes nothing for
the application's queries; the expand and the contract themselves run
through the pooler too (their settings are transaction-local).
"""

import copy

import pytest
from django.db import connection, connections
from django.db.migrations.migration import Migration
from django.db.utils import load_backend

from safemigrate.operations import FinishRenameViaView, RenameFieldViaView
from safemigrate.pg import catalog
from safemigrate.pg.session import is_direct
from tests.rename_window import create_customers, drop_window, expected, orm_matrix, read_back, versions
from tests.test_pgbouncer import PGBOUNCER, PORT, PgBouncer

pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="PGBOUNCER TESTS SKIPPED: pgbouncer is not installed")

ALIAS = "through_pgbouncer"


@pytest.fixture
def pooled(transactional_db):
    bouncer = PgBouncer("transaction")
    settings = copy.deepcopy(connection.settings_dict)
    settings.update(HOST=str(bouncer.dir), PORT=str(PORT))
    # Created on the fly (not in DATABASES), as the tests' other extra connections are.
    connections[ALIAS] = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, ALIAS)
    try:
        yield connections[ALIAS]
    finally:
        connections[ALIAS].close()
        del connections[ALIAS]
        bouncer.stop()


def apply(operation, state, through, backwards=False):
    migration = Migration("0002_rename", "shop")
    migration.operations = [operation]
    migration.atomic = False
    with through.schema_editor(atomic=False) as editor:
        if backwards:
            return migration.unapply(state.clone(), editor)
        return migration.apply(state.clone(), editor)


def test_orm_matrix_of_both_versions_through_pgbouncer_in_transaction_mode(table_name, pooled):
    state = create_customers(table_name)
    try:
        assert is_direct(pooled) is False  # really through the pooler
        new_state = apply(RenameFieldViaView("customer", "name", "full_name"), state, pooled)
        assert catalog.rename_window(connection, table_name).aliases == [("name", "full_name")]
        Old, New = versions(table_name)
        orm_matrix(Old, "name", "old-pooled", using=ALIAS)
        orm_matrix(New, "full_name", "new-pooled", using=ALIAS)
        assert read_back(New, "full_name", "old-pooled") == expected("old-pooled")
        assert read_back(Old, "name", "new-pooled") == expected("new-pooled")
        apply(FinishRenameViaView("customer", "name", "full_name"), new_state, pooled)
        assert catalog.rename_window(connection, table_name) is None
        orm_matrix(New, "full_name", "after-pooled", using=ALIAS)
        # No session setting left on the pool's server connections by the expand or the contract.
        with pooled.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_settings WHERE source = 'session' AND name IN "
                           "('lock_timeout', 'statement_timeout')")
            assert cursor.fetchone() == (0,)
    finally:
        drop_window(table_name)
