"""Test configuration: every test runs against a real PostgreSQL server.

``testproject.settings`` starts a private server when ``DATABASE_URL`` is
unset; pytest-django then creates one test database per xdist worker.
"""

import os

import pytest
from django.db import connection

from tests.utils import execute, unique_table

# Tests rewrite models.py files and run manage.py subprocesses on them, sometimes
# within one second at the same size: a bytecode cache would serve the old code.
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")


@pytest.fixture
def table_name(transactional_db):
    """A fresh table name, dropped (with anything left on it) after the test."""
    name = unique_table()
    yield name
    connection.close()
    execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
    execute(f'DROP VIEW IF EXISTS "{name}" CASCADE')
