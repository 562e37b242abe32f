"""Test configuration: every test runs against a real PostgreSQL server.

``testproject.settings`` starts a private server when ``DATABASE_URL`` is
unset; pytest-django then creates one test database per xdist worker.
"""

import pytest
from django.db import connection

from tests.utils import execute, unique_table


@pytest.fixture
def table_name(transactional_db):
    """A fresh table name, dropped (with anything left on it) after the test."""
    name = unique_table()
    yield name
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    execute(f'DROP VIEW IF EXISTS "{name}" CASCADE')
