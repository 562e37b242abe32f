"""Test configuration: every test runs against a real PostgreSQL server.

``testproject.settings`` starts a private server when ``DATABASE_URL`` is
unset; pytest-django then creates one test database per xdist worker.
"""

import os

import pytest
from django.db import connection

from tests.scratch_project import ScratchProject
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


@pytest.fixture
def make_project(tmp_path):
    """Make throw-away projects (``tests.scratch_project.ScratchProject``): ``make_project(**options)``.

    Every project made is dropped (its databases) after the test.
    """
    made = []

    def make(**options):
        project = ScratchProject(tmp_path / f"project{len(made)}", **options)
        made.append(project)
        return project

    yield make
    for project in made:
        project.drop()


@pytest.fixture
def project(request, make_project):
    """A throw-away project; its options come from ``@pytest.mark.project(**options)`` (on a test
    or a module's ``pytestmark``), e.g. ``app``, ``models``, ``migrations``, ``safemigrate``."""
    marker = request.node.get_closest_marker("project")
    return make_project(**(marker.kwargs if marker else {}))


@pytest.fixture
def profile_db(request, transactional_db, settings):
    """A fresh database set up as a profile (``testproject.profiles``); the test runs as its owner role.

    The profile comes from ``@pytest.mark.profile("name")`` (default: the two-role,
    app-schema profile of docs/pages/roles.md). For the test's duration Django's
    default connection is the migration role ``app_owner`` on that database, with
    ``app`` first on its search_path; ``profile_db.connect("app")`` is the
    application role, ``profile_db.connect("admin")`` the superuser. Any test can
    take this fixture to run its feature the way a managed database runs it.
    """
    from testproject.profiles import PROFILES, ProfileDatabase

    marker = request.node.get_closest_marker("profile")
    profile = PROFILES[marker.args[0] if marker else "two_role_app_schema"]
    database = ProfileDatabase(profile).create()
    if profile.schema:
        settings.PGTRIGGER_SCHEMA = profile.schema
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update({key: value for key, value in database.settings("owner").items()
                                     if key in ("NAME", "USER", "PASSWORD", "HOST", "PORT")})
    try:
        yield database
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
        database.drop()


@pytest.fixture
def partitioned(transactional_db):
    """Make partitioned tables as projects do (``testproject.partitioned``); dropped after the test.

    ``partitioned(strategy="list"|"range", partitions=8, rows=1000)`` returns
    ``(table, state)``: a table of ``Item`` rows (``region``, ``v``, ``label``),
    list-partitioned on ``region`` (key ``(id, region)``) or range-partitioned on ``id``,
    filled with ``rows`` rows spread over the partitions, and the migration state of its
    model (``shop.Item``, primary key ``id``), as a hand-written ``RunSQL`` migration
    with a matching ``CreateModel`` state would leave it.
    """
    from django.db.migrations.state import ModelState, ProjectState
    from django.db import models

    from testproject.partitioned import create_sql
    from tests.utils import execute

    made = []

    def make(strategy="list", partitions=8, rows=1000, table=None):
        table = table or unique_table("part")
        for statement in create_sql(table, ["region varchar(10) NOT NULL", "v integer NOT NULL",
                                             "label varchar(20) NULL"], strategy, partitions, rows_hint=rows):
            execute(statement)
        made.append(table)
        if rows:
            execute(f'INSERT INTO "{table}" (region, v, label) SELECT \'r\' || (i %% {partitions}), i, \'l\' || i '
                    f'FROM generate_series(1, %s) i', [rows])
            execute(f'ANALYZE "{table}"')
        state = ProjectState()
        state.add_model(ModelState("shop", "Item", [
            ("id", models.BigAutoField(primary_key=True)),
            ("region", models.CharField(max_length=10)),
            ("v", models.IntegerField()),
            ("label", models.CharField(max_length=20, null=True)),
        ], options={"db_table": table}))
        return table, state

    yield make
    connection.close()
    for table in made:
        execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
