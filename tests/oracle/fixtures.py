"""pytest fixtures for tests that run histories through the oracle (import them into the test module)."""

import pytest

from testproject.profiles import TWO_ROLE

from .history import ScratchDatabase, run_history

#: Leftover progress rows have a test of their own; the defect tests look past them.
PROGRESS = "backfill progress row"


@pytest.fixture(scope="module")
def scratch_databases(django_db_setup, django_db_blocker):
    """Two scratch databases for the whole module (each history starts by emptying them)."""
    with django_db_blocker.unblock(), ScratchDatabase("plain") as plain, ScratchDatabase("safe") as safe:
        yield plain, safe


@pytest.fixture
def databases(scratch_databases, django_db_blocker):
    with django_db_blocker.unblock():
        yield scratch_databases


def _runner(databases, tmp_path):
    plain, safe = databases

    def run(*history, **options):
        outcome = run_history(list(history), tmp_path, plain, safe, **options)
        print(outcome.report())
        return outcome

    run.databases = databases
    return run


@pytest.fixture
def oracle(databases, tmp_path):
    return _runner(databases, tmp_path)


@pytest.fixture(scope="module")
def two_role_scratch_databases(django_db_setup, django_db_blocker):
    """Two scratch databases set up as on a managed database (docs/pages/roles.md), for the whole module."""
    with django_db_blocker.unblock(), ScratchDatabase("plain", profile=TWO_ROLE) as plain, \
            ScratchDatabase("safe", profile=TWO_ROLE) as safe:
        yield plain, safe


@pytest.fixture
def two_role_oracle(two_role_scratch_databases, django_db_blocker, tmp_path, settings):
    """The oracle with both sides set up as on a managed database (docs/pages/roles.md).

    Migrations run as the owner role in the schema ``app``, each code version's
    writes go through the app role, and ``public`` holds decoy tables named like
    the oracle's. Plain Django runs in the same setup, so it stays the reference.
    """
    settings.PGTRIGGER_SCHEMA = "app"
    with django_db_blocker.unblock():
        yield _runner(two_role_scratch_databases, tmp_path)


def passes(outcome):
    """Matching plain Django, or refusing the change with UnsafeChange (a clear message, no harm done)."""
    return outcome.status in ("passed", "refused")
